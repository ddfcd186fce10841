package main

import (
	"github.com/nasreach/nasreach/daemon"
	"github.com/urfave/cli/v3"
)

// storeFlags say where the device table is kept: bbolt in the data
// directory, or an etcd cluster shared by several nodes.
func storeFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "store", Value: "bbolt", Usage: "where the device table is kept: bbolt (a file in the data directory) or etcd (a cluster shared by several nodes)", Sources: cli.EnvVars("NASREACH_STORE")},
		&cli.StringSliceFlag{Name: "etcd-endpoints", Usage: "client URLs of the etcd members, https://HOST:2379 or unix:///PATH (repeatable; with --store etcd)", Sources: cli.EnvVars("NASREACH_ETCD_ENDPOINTS")},
		&cli.StringFlag{Name: "etcd-prefix", Usage: "key prefix of the device table in etcd", DefaultText: "/nasreach", Sources: cli.EnvVars("NASREACH_ETCD_PREFIX")},
		&cli.StringFlag{Name: "etcd-cert", Usage: "client certificate (PEM) for etcd", Sources: cli.EnvVars("NASREACH_ETCD_CERT")},
		&cli.StringFlag{Name: "etcd-key", Usage: "key (PEM) of --etcd-cert", Sources: cli.EnvVars("NASREACH_ETCD_KEY")},
		&cli.StringFlag{Name: "etcd-ca", Usage: "CA (PEM) of the etcd members' certificates", DefaultText: "the system's roots", Sources: cli.EnvVars("NASREACH_ETCD_CA")},
	}
}

// storeConfigFromFlags reads storeFlags; daemon.Config.Validate checks them.
func storeConfigFromFlags(cmd *cli.Command) daemon.StoreConfig {
	return daemon.StoreConfig{
		Backend: cmd.String("store"), EtcdEndpoints: cmd.StringSlice("etcd-endpoints"), EtcdPrefix: cmd.String("etcd-prefix"),
		EtcdCert: cmd.String("etcd-cert"), EtcdKey: cmd.String("etcd-key"), EtcdCA: cmd.String("etcd-ca"),
	}
}
