//go:build !linux

package store

import bolt "go.etcd.io/bbolt"

// releaseMapped does nothing outside Linux: the file's pages stay mapped as
// bbolt left them.
func releaseMapped(*bolt.DB) {}
