package notifications

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/uuid"

	notificationsv1 "github.com/switchyard/switchyard/gen/go/switchyard/notifications/v1"
	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/envelope"
)

// The notifications one consumer transaction writes share their
// create_time (an order confirmed and then cancelled in one batch, say);
// pages still list them in the order they were written, each once.
func TestListInWrittenOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, pool := newTestServer(t)
	customer := uuid.NewString()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	var want []string
	for i := range n {
		subject := fmt.Sprintf("notification %d", i)
		md := consumer.Metadata{Metadata: envelope.Metadata{ID: uuid.New()}}
		if err := s.notify(ctx, tx, md, customer, uuid.NewString(), KindOrderConfirmed, subject, "b"); err != nil {
			t.Fatal(err)
		}
		want = append(want, subject)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var got []string
	token := ""
	for page := 0; ; page++ {
		resp, err := s.ListNotifications(ctx, &notificationsv1.ListNotificationsRequest{CustomerId: customer, PageSize: 3, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range resp.GetNotifications() {
			got = append(got, n.GetSubject())
		}
		if token = resp.GetNextPageToken(); token == "" || page > n {
			break
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("listed %q, want %q", got, want)
	}
}
