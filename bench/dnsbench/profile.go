package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/nasreach/nasreach/dnsserver"
	"github.com/nasreach/nasreach/store"
)

// profileServerCmd is the hidden mode the driver re-executes itself in for
// -pprof: nasreach's DNS path wired as serve wires it (store.Open on the data
// directory, dnsserver with the default zone settings) in this process, with a
// CPU profile written when SIGTERM arrives. nasreach serve has no profiling
// endpoint, and a profile needs the code in the profiled process.
const profileServerCmd = "profile-server"

func runProfileServer(args []string) error {
	fs := flag.NewFlagSet(profileServerCmd, flag.ContinueOnError)
	data := fs.String("data", "", "nasreach data directory (not in use by another process)")
	addr := fs.String("dns", "", "DNS listen address, 127.0.0.1:port")
	zone := fs.String("zone", dnsserver.DefaultZone, "zone")
	out := fs.String("cpuprofile", "", "where to write the CPU profile")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *data == "" || *addr == "" || *out == "" {
		return fmt.Errorf("%s needs -data, -dns and -cpuprofile", profileServerCmd)
	}
	st, err := store.Open(store.Config{Dir: *data})
	if err != nil {
		return err
	}
	defer st.Close()
	srv, err := dnsserver.New(dnsserver.Config{Addr: *addr, Zone: *zone, Source: st})
	if err != nil {
		return err
	}
	defer srv.Shutdown(context.Background()) //nolint:errcheck // the profile is written; nothing to report
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	<-sig
	pprof.StopCPUProfile()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return errors.Join(f.Close(), srv.Shutdown(ctx))
}
