package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Each missing prerequisite is one line saying what to install; what is
// present, or not asked for, says nothing.
func TestCheck(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	onlyGo := filepath.Dir(goBin) // a PATH with go and nothing else
	all := []string{"cc", "postgres", "redis-server", "psql"}
	for _, tc := range []struct {
		name  string
		env   map[string]string
		needs []string
		want  []string // a piece of each line, in order
	}{
		{name: "everything present", needs: all},
		{name: "nothing asked", env: map[string]string{"CC": "switchyard-no-such-cc"}},
		{name: "no C compiler", env: map[string]string{"CC": "switchyard-no-such-cc"}, needs: all,
			want: []string{"switchyard-no-such-cc (Go's C compiler, go env CC) not found: install it (Debian/Ubuntu: apt-get install gcc"}},
		{name: "a compiler with flags", env: map[string]string{"CC": "switchyard-no-such-cc -m64"}, needs: []string{"cc"},
			want: []string{"switchyard-no-such-cc (Go's C compiler"}},
		{name: "cgo turned off", env: map[string]string{"CGO_ENABLED": "0"}, needs: all,
			want: []string{"cgo is off (CGO_ENABLED=0)"}},
		{name: "no PostgreSQL server binaries", env: map[string]string{"SWITCHYARD_PG_BIN": "/nonexistent"}, needs: all,
			want: []string{"PostgreSQL server binaries (initdb, postgres) not found: install them (Debian/Ubuntu: apt-get install postgresql"}},
		{name: "a compiler missing is not PostgreSQL's business", env: map[string]string{"CC": "switchyard-no-such-cc"}, needs: []string{"postgres", "redis-server"}},
		{name: "no psql on PATH", env: map[string]string{"PATH": onlyGo}, needs: []string{"psql"},
			want: []string{"psql"}},
		{name: "two missing", env: map[string]string{"CC": "switchyard-no-such-cc", "SWITCHYARD_PG_BIN": "/nonexistent"}, needs: all,
			want: []string{"apt-get install gcc", "apt-get install postgresql"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			got, err := check(tc.needs)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("check(%v) = %q, want %d lines", tc.needs, got, len(tc.want))
			}
			for i, line := range got {
				if strings.Contains(line, "\n") || !strings.Contains(line, tc.want[i]) {
					t.Errorf("line %d: %q, want one line with %q", i, line, tc.want[i])
				}
			}
		})
	}
	if _, err := check([]string{"gcc"}); err == nil {
		t.Error("check of an unknown prerequisite: no error")
	}
}
