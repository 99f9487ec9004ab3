package loadplot

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"slices"
	"strings"
	"testing"
)

func TestNiceStep(t *testing.T) {
	for _, tc := range []struct {
		span     float64
		maxTicks int
		want     float64
	}{
		{span: 10, maxTicks: 5, want: 2},
		{span: 1, maxTicks: 5, want: 0.2},
		{span: 97, maxTicks: 5, want: 20},
		{span: 100, maxTicks: 5, want: 20},
		{span: 101, maxTicks: 5, want: 50},
		{span: 30, maxTicks: 12, want: 5},
		{span: 0.03, maxTicks: 4, want: 0.01},
		{span: 1000, maxTicks: 4, want: 500},
		{span: 9, maxTicks: 1, want: 10},
		{span: 0, maxTicks: 5, want: 1},
		{span: -3, maxTicks: 5, want: 1},
	} {
		if got := niceStep(tc.span, tc.maxTicks); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("niceStep(%v, %d) = %v, want %v", tc.span, tc.maxTicks, got, tc.want)
		}
	}
}

func TestYAxis(t *testing.T) {
	for _, tc := range []struct {
		max       float64
		top, step float64
	}{
		{max: 97, top: 100, step: 20},
		{max: 100, top: 100, step: 20},
		{max: 49.7, top: 50, step: 10},
		{max: 0.26, top: 0.3, step: 0.1},
		{max: 3, top: 3, step: 1},
		{max: 0, top: 1, step: 0.2}, // nothing to show
		{max: math.NaN(), top: 1, step: 0.2},
	} {
		top, step := yAxis(tc.max, 5)
		if math.Abs(top-tc.top) > 1e-9 || math.Abs(step-tc.step) > 1e-12 {
			t.Errorf("yAxis(%v) = %v, %v, want %v, %v", tc.max, top, step, tc.top, tc.step)
		}
	}
}

func TestTicksAndLabels(t *testing.T) {
	for _, tc := range []struct {
		hi, step float64
		want     []string
	}{
		{hi: 0.3, step: 0.1, want: []string{"0.0", "0.1", "0.2", "0.3"}},
		{hi: 100, step: 20, want: []string{"0", "20", "40", "60", "80", "100"}},
		{hi: 33, step: 5, want: []string{"0", "5", "10", "15", "20", "25", "30"}},
		{hi: 0.1, step: 0.05, want: []string{"0.00", "0.05", "0.10"}},
	} {
		var got []string
		for _, v := range ticks(tc.hi, tc.step) {
			got = append(got, formatTick(v, tc.step))
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("ticks(%v, %v) = %v, want %v", tc.hi, tc.step, got, tc.want)
		}
	}
}

func TestPathBreaksAtGaps(t *testing.T) {
	id := func(v float64) float64 { return v }
	nan := math.NaN()
	for _, tc := range []struct {
		values   []float64
		path     string
		isolated []int
	}{
		{values: []float64{1, 2, 3}, path: "M0.0 1.0L1.0 2.0L2.0 3.0"},
		{values: []float64{1, nan, 3, 4}, path: "M0.0 1.0M2.0 3.0L3.0 4.0", isolated: []int{0}},
		{values: []float64{nan, 5, math.Inf(1)}, path: "M1.0 5.0", isolated: []int{1}},
		{values: nil, path: ""},
	} {
		if got := path(tc.values, id, id); got != tc.path {
			t.Errorf("path(%v) = %q, want %q", tc.values, got, tc.path)
		}
		if got := isolated(tc.values); !slices.Equal(got, tc.isolated) {
			t.Errorf("isolated(%v) = %v, want %v", tc.values, got, tc.isolated)
		}
	}
}

// The output is well-formed XML, every series is drawn (a group titled
// with its name holding a non-empty path) and named in a legend, and text
// is escaped.
func TestSVGIsXMLWithEverySeries(t *testing.T) {
	nan := math.NaN()
	chart := Chart{
		Title:  "load <50/s> & more",
		XLabel: "seconds",
		Panels: []Panel{
			{Title: "orders/s", Series: []Series{
				{Name: "sent", Values: []float64{50, 50, 50, 0}},
				{Name: "terminal", Values: []float64{0, 40, 55, 5}},
			}},
			{Title: "latency (ms)", Series: []Series{
				{Name: "p50", Values: []float64{nan, 110, 120, nan}},
				{Name: "p99", Values: []float64{nan, 240, nan, 260}},
			}},
			{Title: "consumer lag", Series: nil, Note: "switchyard_consumer_lag_messages not served"},
		},
	}
	out := SVG(chart)

	drawn := map[string]bool{}
	var text []string
	dec := xml.NewDecoder(bytes.NewReader(out))
	var inTitle bool
	var lastTitle string
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not XML: %v\n%s", err, out)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			inTitle = tok.Name.Local == "title"
			if tok.Name.Local == "path" {
				for _, a := range tok.Attr {
					if a.Name.Local == "d" && strings.HasPrefix(a.Value, "M") {
						drawn[lastTitle] = true
					}
				}
			}
		case xml.EndElement:
			inTitle = false
		case xml.CharData:
			if inTitle {
				lastTitle = string(tok)
			}
			if t := strings.TrimSpace(string(tok)); t != "" {
				text = append(text, t)
			}
		}
	}
	// Joined with spaces, so that a note wrapped over several lines reads
	// as one.
	all := strings.Join(text, " ")
	for _, p := range chart.Panels {
		if !strings.Contains(all, p.Title) {
			t.Errorf("panel title %q missing", p.Title)
		}
		for _, s := range p.Series {
			if !drawn[s.Name] {
				t.Errorf("series %q has no path", s.Name)
			}
			if strings.Count(all, s.Name) < 2 { // its <title> and its legend entry
				t.Errorf("series %q not in the legend", s.Name)
			}
		}
	}
	for _, want := range []string{chart.Title, chart.XLabel, chart.Panels[2].Note} {
		if !strings.Contains(all, want) {
			t.Errorf("text %q missing", want)
		}
	}
}

// A chart with nothing in it is still a valid picture.
func TestSVGEmpty(t *testing.T) {
	out := SVG(Chart{Panels: []Panel{{Title: "nothing"}}})
	if err := xml.Unmarshal(out, new(struct{})); err != nil {
		t.Fatalf("not XML: %v\n%s", err, out)
	}
}

func TestWrap(t *testing.T) {
	for _, tc := range []struct {
		text  string
		width int
		want  []string
	}{
		{text: "", width: 10, want: nil},
		{text: "short", width: 10, want: []string{"short"}},
		{text: "switchyard_consumer_lag_messages not served", width: 34, want: []string{"switchyard_consumer_lag_messages", "not served"}},
		{text: "a b c d", width: 3, want: []string{"a b", "c d"}},
		{text: "  spaced   out  ", width: 20, want: []string{"spaced out"}},
	} {
		if got := wrap(tc.text, tc.width); !slices.Equal(got, tc.want) {
			t.Errorf("wrap(%q, %d) = %q, want %q", tc.text, tc.width, got, tc.want)
		}
	}
}
