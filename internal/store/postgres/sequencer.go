package postgres

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// sequencer moves committed events from event_outbox into events, giving
// each its sequence number. A pass holds event_seq's row lock, so passes
// of every replica run one at a time and commit in seq order: a reader of
// events following "after seq" never misses one committed later. Writers
// only insert into event_outbox and wake the sequencer after they commit;
// readers flush it first, so that they see what committed before they
// asked.
type sequencer struct {
	pool *pgxpool.Pool

	once     sync.Once // starts run
	stopOnce sync.Once
	wake     chan struct{} // capacity 1: "there may be events to number"
	quit     chan struct{}
	done     chan struct{}
}

// sequenceBatch is the most events one pass numbers.
const sequenceBatch = 10000

// sequenceEvery is how often the sequencer looks for events that no wake
// announced: those of a replica that stopped between its commit and its
// next pass.
const sequenceEvery = time.Second

// sequenceTimeout bounds one background drain.
const sequenceTimeout = 30 * time.Second

func newSequencer(pool *pgxpool.Pool) *sequencer {
	return &sequencer{pool: pool, wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
}

// kick wakes the sequencer, starting it the first time: a transaction
// that may have appended events has committed.
func (q *sequencer) kick() {
	q.once.Do(func() { go q.run() })
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *sequencer) run() {
	defer close(q.done)
	tick := time.NewTicker(sequenceEvery)
	defer tick.Stop()
	for {
		select {
		case <-q.quit:
			return
		case <-q.wake:
		case <-tick.C:
		}
		// Most wakes follow commits that appended nothing, or events a
		// reader has numbered already: flush looks before it locks.
		// Errors (the database away, say) wait for the next wake or tick;
		// readers see them when they flush.
		ctx, cancel := context.WithTimeout(context.Background(), sequenceTimeout)
		_ = q.flush(ctx)
		cancel()
	}
}

// stop ends the background passes; events left in the outbox are
// numbered by the next reader or replica.
func (q *sequencer) stop() {
	q.stopOnce.Do(func() {
		q.once.Do(func() { close(q.done) }) // never started: nothing to wait for
		close(q.quit)
		<-q.done
	})
}

// flush numbers every event committed so far, for a reader.
func (q *sequencer) flush(ctx context.Context) error {
	var pending bool
	if err := q.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM event_outbox)`).Scan(&pending); err != nil {
		return fmt.Errorf("event outbox: %w", interpretError(err, "event"))
	}
	if !pending {
		return nil
	}
	return q.drain(ctx)
}

// drain runs passes until one finds less than a batch.
func (q *sequencer) drain(ctx context.Context) error {
	for {
		n, err := q.pass(ctx)
		if err != nil {
			return err
		}
		if n < sequenceBatch {
			return nil
		}
	}
}

// sequenceSQL moves the first $2 committed events of the outbox, in id
// order, into events, numbered from $1 + 1. They are taken as a range, up
// to the last of their ids, not by a join with the ids: the outbox swings
// from empty to a million rows (a job's cancellation), and a join planned
// while it was empty, which pgx's cached statement keeps as the generic
// plan, compared every row with every id, for minutes, holding
// event_seq's lock. A range is one scan whatever the plan.
const sequenceSQL = `WITH moved AS (
		DELETE FROM event_outbox WHERE id <= (SELECT max(id) FROM (SELECT id FROM event_outbox ORDER BY id LIMIT $2) first)
		RETURNING id, type, product_id, job_id, device_name, data, created_at)
	INSERT INTO events (seq, type, product_id, job_id, device_name, data, created_at)
	SELECT $1 + row_number() OVER (ORDER BY id), type, product_id, job_id, device_name, data, created_at FROM moved`

// pass numbers up to sequenceBatch committed events in id order, the
// order their transactions inserted them.
func (q *sequencer) pass(ctx context.Context) (int, error) {
	var moved int
	err := pgx.BeginTxFunc(ctx, q.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		// The lock first; the statements after it see every transaction
		// committed before this one, including a concurrent pass.
		var base int64
		if err := tx.QueryRow(ctx, `SELECT n FROM event_seq FOR UPDATE`).Scan(&base); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, sequenceSQL, base, sequenceBatch)
		if err != nil {
			return err
		}
		moved = int(tag.RowsAffected())
		if moved == 0 {
			return nil
		}
		_, err = tx.Exec(ctx, `UPDATE event_seq SET n = $1`, base+int64(moved))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("number events: %w", interpretError(err, "event"))
	}
	return moved, nil
}
