package relay

import (
	"context"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/platform/testkit"
)

// The server side of a relay's plain connection (the poll relay's lock)
// probes a silent client and gives up on it within half a minute, unless
// the URL says otherwise. A dead host cannot be staged here (a proxy's
// kernel would answer the probes), so this checks what the session runs
// with.
func TestConnectSetsKeepalive(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testkit.Database(t)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	for _, tt := range []struct {
		name, url string
		want      map[string]string
	}{
		{"defaults", url, map[string]string{"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3", "tcp_user_timeout": "30000"}},
		{"the URL's own", url + sep + "tcp_keepalives_idle=60", map[string]string{"tcp_keepalives_idle": "60", "tcp_keepalives_count": "3"}},
	} {
		conn, err := connect(ctx, tt.url)
		if err != nil {
			t.Fatal(err)
		}
		for name, want := range tt.want {
			var got string
			if err := conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("%s: %s = %s, want %s", tt.name, name, got, want)
			}
		}
		conn.Close(ctx)
	}
}
