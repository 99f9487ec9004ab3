package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// However the soak ends, its last line is the summary, with any error
// before it; an interrupted soak leaves no temporary directory behind, a
// failed one keeps it to be looked into.
func TestEndings(t *testing.T) {
	for _, tc := range []struct {
		name        string
		interrupted bool   // Ctrl-C before the shop is up
		pgBin       string // SWITCHYARD_PG_BIN, when set
		wantCode    int
		wantOutput  string
		wantKept    bool
	}{
		{name: "interrupted", interrupted: true, wantCode: 1, wantOutput: "soak: interrupted"},
		{name: "the shop does not start", pgBin: "/nonexistent", wantCode: 2, wantOutput: "PostgreSQL server binaries (initdb, postgres) not found", wantKept: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			t.Setenv("TMPDIR", tmp)
			if tc.pgBin != "" {
				t.Setenv("SWITCHYARD_PG_BIN", tc.pgBin)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.interrupted {
				cancel()
			}
			var out strings.Builder // stdout and stderr, in the order written
			code := run(ctx, &out, &out, options{duration: 0, rate: 1, bin: t.TempDir()})
			lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d", code, tc.wantCode)
			}
			if last := lines[len(lines)-1]; last != "soak: 0 orders, 0 faults, 0 violations" {
				t.Errorf("last line %q, want the summary; output:\n%s", last, out.String())
			}
			if !strings.Contains(out.String(), tc.wantOutput) {
				t.Errorf("output lacks %q:\n%s", tc.wantOutput, out.String())
			}
			left, err := filepath.Glob(filepath.Join(tmp, "switchyard-soak-*"))
			if err != nil {
				t.Fatal(err)
			}
			if kept := len(left) == 1; kept != tc.wantKept || len(left) > 1 {
				t.Errorf("temporary directories left: %v, want kept=%v", left, tc.wantKept)
			}
			for _, dir := range left {
				_ = os.RemoveAll(dir)
			}
		})
	}
}
