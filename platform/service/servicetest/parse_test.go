package servicetest

import (
	"maps"
	"testing"
)

func TestParseChange(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, line string
		want       Change
	}{
		{"insert", `table public.accounts: INSERT: customer_id[uuid]:'6f1c' balance_minor[bigint]:0 currency[text]:'USD'`,
			Change{"accounts", "INSERT", map[string]string{"customer_id": "6f1c", "balance_minor": "0", "currency": "USD"}}},
		{"quotes, spaces and types with spaces", `table public.t: UPDATE: note[text]:'it''s a b' at[timestamp with time zone]:'2026-11-30 15:00:00+00' n[integer]:null`,
			Change{"t", "UPDATE", map[string]string{"note": "it's a b", "at": "2026-11-30 15:00:00+00", "n": "null"}}},
		{"array type", `table public.t: INSERT: tags[text[]]:'{a,b}' id[integer]:1`,
			Change{"t", "INSERT", map[string]string{"tags": "{a,b}", "id": "1"}}},
		{"key change prints the old key first", `table public.t: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:2 v[text]:'x'`,
			Change{"t", "UPDATE", map[string]string{"id": "2", "v": "x"}}},
		{"delete", `table public.outbox: DELETE: id[uuid]:'ab'`,
			Change{"outbox", "DELETE", map[string]string{"id": "ab"}}},
		{"no tuple data", `table public.t: DELETE: (no-tuple-data)`,
			Change{"t", "DELETE", map[string]string{}}},
		{"quoted column name and bytea", `table public.t: INSERT: "Order"[integer]:7 payload[bytea]:'\x0a02'`,
			Change{"t", "INSERT", map[string]string{"Order": "7", "payload": `\x0a02`}}},
		{"other schema keeps its name", `table shop.t: INSERT: id[integer]:1`,
			Change{"shop.t", "INSERT", map[string]string{"id": "1"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseChange(tc.line)
			if err != nil {
				t.Fatal(err)
			}
			if got.Table != tc.want.Table || got.Op != tc.want.Op || !maps.Equal(got.Row, tc.want.Row) {
				t.Errorf("parseChange(%q)\n got %+v\nwant %+v", tc.line, got, tc.want)
			}
		})
	}
}

func TestParseChangeRejectsMalformedLines(t *testing.T) {
	t.Parallel()
	for _, line := range []string{
		`BEGIN 529`,
		`table public.t`,
		`table public.t: INSERT: id[integer`,
		`table public.t: INSERT: v[text]:'unterminated`,
		`table public.t: INSERT: v`,
	} {
		if c, err := parseChange(line); err == nil {
			t.Errorf("parseChange(%q) = %+v, want an error", line, c)
		}
	}
}
