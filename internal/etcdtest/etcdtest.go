// Package etcdtest runs a real etcd cluster (the etcd program of Debian's
// etcd-server, 3.4 or later) for tests: one member or several, talking to
// each other and to clients over Unix sockets in a directory of their own,
// so that no port is bound. Only tests import it.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Cluster is a running etcd cluster.
type Cluster struct {
	bin     string
	dir     string
	args    [][]string // each member's command line
	members []*exec.Cmd
	// Endpoints are the client URLs of the members, in member order.
	Endpoints []string
	// TLS is set for a cluster started by StartTLS: the files a client
	// needs, in the cluster's directory.
	TLS *TLSFiles
}

// TLSFiles are the PEM files of a cluster that wants TLS and client
// certificates: the CA that signed the members' and the client's
// certificates, and the client's certificate and key.
type TLSFiles struct {
	CA, ClientCert, ClientKey string
}

// Start starts a cluster of n members from the etcd program at bin, with
// their data and sockets in a new directory under os.TempDir (short, since
// a socket path is limited to 107 bytes), and returns once every member
// answers a read. Stop stops it and removes the directory.
func Start(bin string, n int) (*Cluster, error) { return start(bin, n, false) }

// StartTLS is Start for a cluster whose members serve clients over TLS
// (unixs:// endpoints) and accept only clients with a certificate signed
// by the CA in c.TLS, which it makes, with the members' certificates, in
// the cluster's directory.
func StartTLS(bin string, n int) (*Cluster, error) { return start(bin, n, true) }

func start(bin string, n int, withTLS bool) (*Cluster, error) {
	dir, err := os.MkdirTemp("", "etcd")
	if err != nil {
		return nil, err
	}
	c := &Cluster{bin: bin, dir: dir}
	scheme := "unix"
	if withTLS {
		if c.TLS, err = writeCerts(dir, n); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		scheme = "unixs"
	}
	var initial []string
	for i := range n {
		initial = append(initial, fmt.Sprintf("m%d=unix://p%d:2", i, i))
	}
	for i := range n {
		// etcd wants host:port even in a unix URL; it binds the socket
		// "c0:1" in its working directory, which clients reach by the
		// absolute path.
		client := fmt.Sprintf("%s://c%d:1", scheme, i)
		peer := fmt.Sprintf("unix://p%d:2", i)
		args := []string{"--name", fmt.Sprintf("m%d", i), "--data-dir", fmt.Sprintf("m%d.data", i),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "etcdtest", "--heartbeat-interval", "50", "--election-timeout", "500"}
		if withTLS {
			args = append(args, "--cert-file", "member.pem", "--key-file", "member.key",
				"--client-cert-auth", "--trusted-ca-file", "ca.pem")
		}
		c.args = append(c.args, args)
		c.members = append(c.members, nil)
		if err := c.StartMember(i); err != nil {
			c.Stop()
			return nil, err
		}
		c.Endpoints = append(c.Endpoints, scheme+"://"+filepath.Join(dir, fmt.Sprintf("c%d:1", i)))
	}
	if err := c.waitReady(30 * time.Second); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// StartMember starts member i again after StopMember, with the data it
// had; it does not wait for it to be ready.
func (c *Cluster) StartMember(i int) error {
	log, err := os.OpenFile(filepath.Join(c.dir, fmt.Sprintf("m%d.log", i)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(c.bin, c.args[i]...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = c.dir, log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start etcd member %d: %w", i, err)
	}
	c.members[i] = cmd
	return nil
}

// StopMember stops member i (SIGTERM, then SIGKILL after 10s), keeping its
// data for StartMember.
func (c *Cluster) StopMember(i int) error {
	m := c.members[i]
	if m == nil || m.ProcessState != nil {
		return nil
	}
	_ = m.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- m.Wait() }()
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		_ = m.Process.Kill()
		<-done
		return fmt.Errorf("etcd member %d (pid %d) did not stop on SIGTERM", i, m.Process.Pid)
	}
}

// waitReady waits until every member answers a linearizable read.
func (c *Cluster) waitReady(within time.Duration) error {
	deadline := time.Now().Add(within)
	for _, ep := range c.Endpoints {
		for {
			err := c.ping(ep)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("etcd at %s not ready after %v: %w (logs in %s)", ep, within, err, c.dir)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

func (c *Cluster) ping(endpoint string) error {
	conf := clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: time.Second, Logger: zap.NewNop()}
	if c.TLS != nil {
		var err error
		if conf.TLS, err = c.TLS.Config(); err != nil {
			return err
		}
	}
	cli, err := clientv3.New(conf)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = cli.Get(ctx, "etcdtest-ready")
	return err
}

// Stop stops every member and removes their data.
func (c *Cluster) Stop() error {
	var errs []error
	for i := range c.members {
		errs = append(errs, c.StopMember(i))
	}
	errs = append(errs, os.RemoveAll(c.dir))
	return errors.Join(errs...)
}
