package platform_test

import (
	"context"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/relay"
	"github.com/switchyard/switchyard/platform/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// usePieces is README.md's "Using the pieces directly", compiled and run
// by TestUsingThePiecesDirectly: the lines between the markers are the
// README's block, character for character (less one tab of indent).
func usePieces(ctx context.Context, pool *pgxpool.Pool, dbURL, brokers, id string, welcomed chan<- string) error {
	// README begin
	// 1. Schema: the outbox table (the relay also creates it) and, for
	//    consumers, the inbox table; the topics the consumer reads.
	if err := outbox.Migrate(ctx, pool); err != nil {
		return err
	}
	if err := consumer.Migrate(ctx, pool); err != nil {
		return err
	}
	tr, err := broker.New(broker.Config{Brokers: brokers}) // or redisstream.New(...)
	if err != nil {
		return err
	}
	defer tr.Close()
	if err := tr.EnsureTopics(ctx, "switchyard.customer"); err != nil {
		return err
	}

	// 2. Create the relay's slot before the first write: a replication slot
	//    only sees transactions that commit after it exists.
	rl, err := relay.New(relay.Config{DatabaseURL: dbURL, Transport: tr, TopicPrefix: "switchyard."})
	if err != nil {
		return err
	}
	if err := rl.Prepare(ctx); err != nil {
		return err
	}
	go func() { // active, or standby until the active relay goes away
		if err := rl.Run(ctx); err != nil { // only what an operator must fix
			slog.Error("relay stopped", "error", err)
		}
	}()

	// 3. Write events in the same transaction as the change they describe.
	w := outbox.NewWriter(outbox.ModeCDC)
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO customers (id) VALUES ($1)`, id); err != nil {
			return err
		}
		return w.Write(ctx, tx, outbox.Event{
			AggregateType: "customer",            // topic "switchyard.customer"
			AggregateID:   id,                    // Kafka key: per-customer order is kept
			Message:       wrapperspb.String(id), // any protobuf message: your events
		})
	})
	if err != nil {
		return err
	}

	// 4. Consume: one handler per protobuf type; the handler's changes, its
	//    own outbox writes and the inbox row commit together.
	c, err := consumer.New(consumer.Config{Transport: tr, Group: "welcome", Topics: []string{"switchyard.customer"}, Pool: pool})
	if err != nil {
		return err
	}
	consumer.Handle(c, func(ctx context.Context, tx pgx.Tx, ev *wrapperspb.StringValue, md consumer.Metadata) error {
		if _, err := tx.Exec(ctx, `INSERT INTO welcomes (customer_id) VALUES ($1)`, ev.Value); err != nil {
			return err // an error is retried with backoff, then dead-lettered
		}
		md.AfterCommit(func(context.Context) { welcomed <- ev.Value })
		return nil
	})
	return c.Run(ctx) // until ctx ends
	// README end
}

// The README's block runs: an event written with a row reaches a consumer
// through the relay, and the block is the code here.
func TestUsingThePiecesDirectly(t *testing.T) {
	testkit.SkipShort(t, "PostgreSQL and a broker")
	t.Parallel()
	dbURL := testkit.Database(t)
	pool := testkit.Pool(t, dbURL)
	if _, err := pool.Exec(context.Background(), `CREATE TABLE customers (id text PRIMARY KEY); CREATE TABLE welcomes (customer_id text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	welcomed := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- usePieces(ctx, pool, dbURL, testkit.Kafka(t).Addr(), "c-1", welcomed) }()
	select {
	case got := <-welcomed:
		if got != "c-1" {
			t.Errorf("welcomed %q, want c-1", got)
		}
	case err := <-done:
		t.Fatalf("the pieces stopped before the event was consumed: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("the event did not reach the consumer within 2 minutes")
	}
	cancel()
	if err := <-done; err != nil && ctx.Err() == nil {
		t.Fatal(err)
	}

	src, err := os.ReadFile("pieces_test.go")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	code := regexp.MustCompile(`(?s)\t// README begin\n(.*?)\t// README end\n`).FindSubmatch(src)
	block := regexp.MustCompile("(?s)## Using the pieces directly\n.*?```go\n(.*?)```\n").FindSubmatch(readme)
	if code == nil || block == nil {
		t.Fatal("no README markers in pieces_test.go or no go block under README.md's \"Using the pieces directly\"")
	}
	want := regexp.MustCompile(`(?m)^\t`).ReplaceAllString(string(code[1]), "")
	if strings.TrimSpace(string(block[1])) != strings.TrimSpace(want) {
		t.Errorf("README.md's \"Using the pieces directly\" differs from usePieces in pieces_test.go; paste this:\n%s", want)
	}
}
