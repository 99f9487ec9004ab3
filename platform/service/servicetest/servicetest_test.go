package servicetest_test

import (
	"context"
	"errors"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"

	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/internal/testpb"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/service/servicetest"
	"github.com/switchyard/switchyard/platform/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// counter is a toy service: a Word adds to the word's count and emits the
// new count; the word "poison" is refused for good.
func counter() service.Spec {
	return service.Spec{
		Name: "counter", Port: 1, Emits: true,
		Migrations: fstest.MapFS{"001_counts.sql": {Data: []byte(`CREATE TABLE counts (word text PRIMARY KEY, n bigint NOT NULL)`)}},
		Setup: func(env *service.Env) error {
			consumer.Handle(env.Consumer, func(ctx context.Context, tx pgx.Tx, w *testpb.Word, md consumer.Metadata) error {
				if w.GetText() == "poison" {
					return consumer.Permanent(errors.New("poison is not a word"))
				}
				var n int64
				if err := tx.QueryRow(ctx, `INSERT INTO counts VALUES ($1, 1) ON CONFLICT (word) DO UPDATE SET n = counts.n + 1 RETURNING n`,
					w.GetText()).Scan(&n); err != nil {
					return err
				}
				return env.Outbox.Write(ctx, tx, outbox.Event{AggregateID: w.GetText(), Message: &testpb.WordCounted{Text: w.GetText(), Count: n}})
			})
			return nil
		},
	}
}

func TestApplyReturnsWritesAndEmits(t *testing.T) {
	t.Parallel()
	svc := servicetest.Start(t, counter(), nil)
	res := svc.Apply("go", &testpb.Word{Text: "go"})
	counted := servicetest.Emitted[*testpb.WordCounted](t, res) // the event it emitted
	row := res.Inserted("counts")[0].Row                        // the row it wrote: row["n"] == "1"
	if counted.GetCount() != 1 || row["word"] != "go" || row["n"] != "1" || len(res.Writes) != 1 {
		t.Errorf("first apply emitted %v and wrote %+v, want a count of 1 and one counts row go=1", counted, res.Writes)
	}
	if e := res.Emitted[0]; e.AggregateType != "count" || e.AggregateID != "go" {
		t.Errorf("emitted as %s/%s, want count/go", e.AggregateType, e.AggregateID)
	}

	second := svc.Apply("go", &testpb.Word{Text: "go"})
	if up := second.Updated("counts"); len(up) != 1 || up[0].Row["n"] != "2" || len(second.Writes) != 1 {
		t.Errorf("second apply wrote %+v, want one update of counts to n=2", second.Writes)
	}
	if n := servicetest.Emitted[*testpb.WordCounted](t, second); n.GetCount() != 2 {
		t.Errorf("second apply emitted count %d, want 2", n.GetCount())
	}
	if res.DeadLettered != "" || second.DeadLettered != "" {
		t.Errorf("dead-lettered: %q, %q", res.DeadLettered, second.DeadLettered)
	}

	poison := svc.Apply("poison", &testpb.Word{Text: "poison"})
	if poison.DeadLettered == "" || len(poison.Writes) != 0 || len(poison.Emitted) != 0 {
		t.Errorf("poison: %+v, want dead-lettered with nothing written or emitted", poison)
	}
	// What the kit reported is what the database holds.
	var n int64
	if err := svc.Pool.QueryRow(context.Background(), `SELECT n FROM counts WHERE word = 'go'`).Scan(&n); err != nil || n != 2 {
		t.Errorf("counts[go] = %d (%v), want 2", n, err)
	}
}
