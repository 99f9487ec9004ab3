package analytics

import (
	"testing"
	"time"
)

func TestScoreValue(t *testing.T) {
	one := []Line{{SKU: "A", Units: 1}}
	tests := []struct {
		name  string
		lines []Line
		total int64
		want  int32
	}{
		{"nothing", nil, 0, 0},
		{"1 USD, one SKU", one, 100, 410},
		{"100 USD, one SKU", one, 10_000, 810},
		{"capped at 1000", one, 1 << 60, 1000},
		{"three SKUs add 30", []Line{{SKU: "A"}, {SKU: "B"}, {SKU: "C"}, {SKU: "A"}}, 100, 430},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := scoreValue(tt.lines, tt.total); got != tt.want {
				t.Errorf("scoreValue = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestOptionsFromEnv(t *testing.T) {
	tests := []struct {
		value   string
		want    time.Duration
		wantErr bool
	}{
		{"", DefaultWork, false},
		{"5ms", 5 * time.Millisecond, false},
		{"0", 0, false},
		{"-1ms", 0, true},
		{"fast", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			o, err := OptionsFromEnv(func(string) string { return tt.value })
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && o.Work != tt.want {
				t.Errorf("Work = %v, want %v", o.Work, tt.want)
			}
		})
	}
}
