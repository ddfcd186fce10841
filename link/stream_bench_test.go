package link

// BenchmarkDirectStreams measures one direct connection in one process, so
// that a busy machine disturbs it less than make bench-link's three
// processes: a bare quic-go stream against a session as Link's direct path
// carries it (the end-to-end TLS inside the stream, the agent splicing it to
// a local TCP service), plain ("link") and resumable ("resume": the record
// layer of session.go under the TLS), with 1 and 8 parallel streams; and
// "quic-tcp", a bare quic-go stream spliced to the same TCP service as a
// session is, without the end-to-end TLS: "link" against it is what the
// inner TLS costs, "quic-tcp" against "quic" what the hop to the service
// does. Real quic-go over
// loopback UDP, real TLS, a real TCP service; it reports goodput and the
// CPU time of the whole process (both ends) per GB.
//
//	go test -run '^$' -bench BenchmarkDirectStreams -benchtime 4x ./link

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// benchStreamTotal is what each benchmark operation moves, over all streams.
const benchStreamTotal = 256 << 20

func BenchmarkDirectStreams(b *testing.B) {
	key, _, err := LoadOrCreateKey(filepath.Join(b.TempDir(), "device.key"))
	if err != nil {
		b.Fatal(err)
	}
	cert, err := SelfSignedCert(key, "nas1")
	if err != nil {
		b.Fatal(err)
	}
	// The TCP service behind the agent: a byte sink that answers the count.
	svc, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer svc.Close()
	go func() {
		for {
			c, err := svc.Accept()
			if err != nil {
				return
			}
			go func() { SinkServe(c); c.Close() }()
		}
	}()

	for _, streams := range []int{1, 8} {
		for _, kind := range []string{"quic", "quic-tcp", "link", "resume"} {
			b.Run(fmt.Sprintf("streams=%d/%s", streams, kind), func(b *testing.B) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				client, far := benchDirectConn(b, cert, kind)
				// The far end: a bare sink, or the agent's side of a session.
				go func() {
					for {
						s, err := far.AcceptStream(ctx)
						if err != nil {
							return
						}
						go func() {
							if kind == "quic" {
								SinkServe(s)
								s.Close()
								return
							}
							sc := newStreamConn(s, far)
							local, err := net.Dial("tcp", svc.Addr().String())
							if err != nil {
								sc.Close()
								return
							}
							defer local.Close()
							if kind == "quic-tcp" {
								splice(local, sc)
								return
							}
							if kind == "resume" {
								fr, err := ReadFrame(sc, 0)
								f, ok := fr.(Session)
								if err != nil || !ok || WriteFrame(sc, Result{Status: StatusOK}) != nil {
									sc.Close()
									return
								}
								ses := newSession(f.ID, 9, DefaultResumeWindow, sc, Path{}, benchSpawn, nil, nil)
								tc := tls.Server(ses, serverE2E(cert))
								if err := tc.HandshakeContext(ctx); err != nil {
									return
								}
								splice(local, &e2eConn{Conn: tc, s: ses})
								return
							}
							defer sc.Close()
							tc := tls.Server(sc, serverE2E(cert))
							if err := tc.HandshakeContext(ctx); err != nil {
								return
							}
							splice(local, &e2eConn{Conn: tc, sc: sc})
						}()
					}
				}()
				open := func() (io.ReadWriteCloser, func() error, error) {
					s, err := client.OpenStreamSync(ctx)
					if err != nil {
						return nil, nil, err
					}
					if kind == "quic" || kind == "quic-tcp" {
						return s, s.Close, nil
					}
					sc := newStreamConn(s, client)
					if kind == "resume" {
						var id [SessionIDLen]byte
						rand.Read(id[:])
						if res, err := request(ctx, sc, Session{ID: id}, DefaultHandshakeTimeout); err != nil || res.Status != StatusOK {
							return nil, nil, fmt.Errorf("session: %v %v", res, err)
						}
						ses := newSession(id, 9, DefaultResumeWindow, sc, Path{}, benchSpawn, nil, nil)
						tc := tls.Client(ses, clientE2E("relay", "nas1", "", nil))
						if err := tc.HandshakeContext(ctx); err != nil {
							return nil, nil, err
						}
						c := &e2eConn{Conn: tc, s: ses}
						return c, c.CloseWrite, nil
					}
					tc := tls.Client(sc, clientE2E("relay", "nas1", "", nil))
					if err := tc.HandshakeContext(ctx); err != nil {
						return nil, nil, err
					}
					c := &e2eConn{Conn: tc, sc: sc}
					return c, c.CloseWrite, nil
				}
				benchSend(b, streams, 32<<20, open) // warm up the windows
				cpu0 := SelfCPU()
				for b.Loop() {
					benchSend(b, streams, benchStreamTotal, open)
				}
				el := b.Elapsed()
				cpu := SelfCPU() - cpu0
				moved := float64(b.N) * benchStreamTotal
				b.ReportMetric(moved/(1<<20)/el.Seconds(), "MiB/s")
				b.ReportMetric(cpu.Seconds()/(moved/1e9), "CPU-s/GB")
				b.ReportMetric(0, "ns/op")
				client.CloseWithError(0, "")
				far.CloseWithError(0, "")
			})
		}
	}
}

// benchSpawn runs a session's stream readers.
func benchSpawn(f func()) bool { go f(); return true }

// benchDirectConn returns both ends of a QUIC connection over loopback UDP:
// Link's direct configuration (TLS and QUIC) with kind "link", quic-go's
// defaults with "quic", as make bench-link's bare quic-go path has them.
func benchDirectConn(b testing.TB, cert tls.Certificate, kind string) (client, far *quic.Conn) {
	b.Helper()
	listen := func() *quic.Transport {
		u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		tr := &quic.Transport{Conn: u}
		b.Cleanup(func() { tr.Close(); u.Close() })
		return tr
	}
	serverTLS, clientTLS := directServerTLS(cert), &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{DirectALPN}, InsecureSkipVerify: true}
	serverQUIC, clientQUIC := directQUIC(DefaultHandshakeTimeout), directQUIC(DefaultHandshakeTimeout)
	if kind == "quic" || kind == "quic-tcp" {
		serverTLS = &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"bench"}, Certificates: []tls.Certificate{cert}}
		clientTLS = &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"bench"}, InsecureSkipVerify: true}
		serverQUIC, clientQUIC = &quic.Config{MaxIncomingStreams: 1000}, &quic.Config{}
	}
	st, ct := listen(), listen()
	ln, err := st.Listen(serverTLS, serverQUIC)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accepted := make(chan *quic.Conn, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			b.Error(err)
		}
		accepted <- c
	}()
	client, err = ct.Dial(ctx, ln.Addr(), clientTLS, clientQUIC)
	if err != nil {
		b.Fatal(err)
	}
	if far = <-accepted; far == nil {
		b.FailNow()
	}
	return client, far
}

// benchSend moves total bytes over streams parallel streams from open: each
// writes its share in 64 KiB writes, half-closes and waits for the far end's
// count.
func benchSend(b *testing.B, streams int, total int64, open func() (io.ReadWriteCloser, func() error, error)) {
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for range streams {
		wg.Go(func() {
			c, closeWrite, err := open()
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := SinkSend(c, closeWrite, total/int64(streams)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// SinkSend sends n bytes on a stream or connection in 64 KiB writes,
// half-closes, and waits for the far end's 8-byte count of what it received
// (SinkServe). It and SelfCPU serve make bench-link too (bench_test.go).
func SinkSend(c io.ReadWriter, closeWrite func() error, n int64) error {
	buf := make([]byte, 64<<10)
	for sent := int64(0); sent < n; {
		k := min(int64(len(buf)), n-sent)
		if _, err := c.Write(buf[:k]); err != nil {
			return err
		}
		sent += k
	}
	if err := closeWrite(); err != nil {
		return err
	}
	var got [8]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		return err
	}
	if m := int64(binary.BigEndian.Uint64(got[:])); m != n {
		return fmt.Errorf("far end received %d of %d bytes", m, n)
	}
	return nil
}

// SinkServe is the receiving end of SinkSend: count, then answer the count.
func SinkServe(rw io.ReadWriter) {
	n, _ := io.Copy(io.Discard, rw)
	var out [8]byte
	binary.BigEndian.PutUint64(out[:], uint64(n))
	rw.Write(out[:])
}

// SelfCPU is the CPU time (user and system) this process has used.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
