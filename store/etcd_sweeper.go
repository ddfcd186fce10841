package store

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// sweeperTTL is the lease, in seconds, that keeps one node the sweeper: when
// that node dies, another takes the sweeps over within this time.
const sweeperTTL = 5

// etcdSweeper is the election key under the prefix.
const etcdSweeper = "/sweeper"

// sweepWhenElected runs the sweeps on one node of all that share the table:
// it campaigns in an etcd election (concurrency.Election) and, while this
// node leads, calls Sweep every interval. A node that stops (Close) resigns
// at once; one that dies loses its lease after sweeperTTL, and another node
// is elected. Sweeps are compare-and-swap writes, so a sweep that overlaps a
// change of leader still expires each device once.
func (s *Etcd) sweepWhenElected(ctx context.Context, interval time.Duration) {
	for ctx.Err() == nil {
		if err := s.leadSweeps(ctx, interval); err != nil && ctx.Err() == nil {
			s.log.Warn().Err(err).Msg("store sweeper election failed; campaigning again")
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// leadSweeps campaigns, and sweeps while elected, until ctx ends or the
// session's lease is lost.
func (s *Etcd) leadSweeps(ctx context.Context, interval time.Duration) error {
	// The session ends with ctx (a Close does not wait for a lease grant
	// that a cluster without quorum never answers); endSession then
	// revokes its lease, which hands the sweeps over at once instead of
	// after sweeperTTL.
	sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(sweeperTTL), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("etcd session: %w", err)
	}
	defer s.endSession(sess)
	e := concurrency.NewElection(sess, s.prefix+etcdSweeper)
	if err := e.Campaign(ctx, s.id); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	s.sweeping.Store(true)
	defer s.sweeping.Store(false)
	s.log.Info().Msg("this node now runs the store's sweeps")
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sess.Done():
			return fmt.Errorf("the sweeper's etcd lease ended")
		case <-t.C:
			if _, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
				s.log.Error().Err(err).Msg("store sweep failed")
			}
		}
	}
}

// Sweeping reports whether this node is the elected sweeper now.
func (s *Etcd) Sweeping() bool { return s.sweeping.Load() }

// endSession revokes the session's lease, which hands the sweeps over at
// once, waiting at most a second and not at all without a leader (a
// cluster without quorum cannot revoke it; it then expires after
// sweeperTTL), so that Close is quick either way.
func (s *Etcd) endSession(sess *concurrency.Session) {
	sess.Orphan()
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.Background()), time.Second)
	defer cancel()
	_, _ = s.cli.Revoke(ctx, sess.Lease())
}
