// Package loadplot draws per-second series of a load run as an SVG: panels
// stacked over one shared time axis, each with its own y axis, grid and
// legend. It exists because Grafana cannot run where the load generator
// does; the picture is written with the standard library only, so that it
// can be committed and shown in a README.
package loadplot

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Series is one line of a panel: Values[i] is the value at second i of the
// run; NaN (or ±Inf) where nothing was measured, which leaves a gap.
type Series struct {
	Name   string
	Values []float64
}

// Panel is one chart of the stack; its series share the y axis, which
// starts at 0 (every series a load run records is a rate, a latency or a
// count).
type Panel struct {
	Title  string // above the panel, with the unit: "latency (ms)"
	Series []Series
	Note   string // under the legend, e.g. why a series is missing
}

// Chart is the whole picture: a title and the panels, top to bottom.
type Chart struct {
	Title  string
	XLabel string // under the time axis
	Panels []Panel
}

// Layout in SVG user units (pixels). The legend sits right of the plots so
// that it never hides a line.
const (
	width        = 980
	marginLeft   = 64
	legendWidth  = 230
	plotWidth    = width - marginLeft - legendWidth - 16
	titleHeight  = 34
	panelTitle   = 22
	plotHeight   = 140
	panelGap     = 26
	xAxisHeight  = 44
	maxXTicks    = 12
	maxYTicks    = 5
	legendLine   = 16
	legendLength = 18
	legendChars  = 37 // characters of 11px text that fit the legend's width
)

// palette is Tableau 10: distinct for the few series a panel has, and
// readable by most colour-blind readers.
var palette = []string{"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#9c755f", "#ff9da7", "#edc948", "#bab0ac"}

// SVG renders the chart. It never fails: empty panels and series without a
// single value are drawn as empty axes.
func SVG(c Chart) []byte {
	n := 0 // samples: the longest series
	for _, p := range c.Panels {
		for _, s := range p.Series {
			n = max(n, len(s.Values))
		}
	}
	xMax := float64(max(n-1, 1))
	xStep := niceStep(xMax, maxXTicks)
	x := func(v float64) float64 { return marginLeft + v/xMax*plotWidth }

	height := titleHeight + len(c.Panels)*(panelTitle+plotHeight+panelGap) + xAxisHeight
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n",
		width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", marginLeft, esc(c.Title))

	top := float64(titleHeight)
	for i, p := range c.Panels {
		plotTop := top + panelTitle
		bottom := plotTop + plotHeight
		yMax, yStep := yAxis(maxValue(p.Series), maxYTicks)
		y := func(v float64) float64 { return bottom - v/yMax*plotHeight }

		fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-size="12" font-weight="bold">%s</text>`+"\n", marginLeft, plotTop-7, esc(p.Title))
		// Grid and tick labels first, so that the lines are drawn over them.
		b.WriteString(`<g stroke="#ddd">` + "\n")
		for _, v := range ticks(yMax, yStep) {
			fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f"/>`+"\n", marginLeft, marginLeft+plotWidth, y(v), y(v))
		}
		for _, v := range ticks(xMax, xStep) {
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f"/>`+"\n", x(v), x(v), plotTop, bottom)
		}
		b.WriteString("</g>\n")
		b.WriteString(`<g text-anchor="end" fill="#444">` + "\n")
		for _, v := range ticks(yMax, yStep) {
			fmt.Fprintf(&b, `<text x="%d" y="%.1f">%s</text>`+"\n", marginLeft-5, y(v)+4, formatTick(v, yStep))
		}
		b.WriteString("</g>\n")
		fmt.Fprintf(&b, `<rect x="%d" y="%.1f" width="%d" height="%d" fill="none" stroke="#888"/>`+"\n", marginLeft, plotTop, plotWidth, plotHeight)

		legendX := marginLeft + plotWidth + 14
		for j, s := range p.Series {
			colour := palette[j%len(palette)]
			// A group per series with a <title>: browsers show the name
			// on hover, and the series stays identifiable in the file.
			fmt.Fprintf(&b, `<g><title>%s</title>`, esc(s.Name))
			fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="%s" stroke-width="1.6" stroke-linejoin="round"/>`, path(s.Values, x, y), colour)
			for _, pt := range isolated(s.Values) {
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="1.8" fill="%s"/>`, x(float64(pt)), y(s.Values[pt]), colour)
			}
			b.WriteString("</g>\n")
			ly := plotTop + 8 + float64(j*legendLine)
			fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="%s" stroke-width="2.5"/>`, legendX, legendX+legendLength, ly, ly, colour)
			fmt.Fprintf(&b, `<text x="%d" y="%.1f">%s</text>`+"\n", legendX+legendLength+5, ly+4, esc(s.Name))
		}
		for k, line := range wrap(p.Note, legendChars) {
			ly := plotTop + 8 + float64((len(p.Series)+k)*legendLine)
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" fill="#666" font-style="italic">%s</text>`+"\n", legendX, ly+4, esc(line))
		}

		if i == len(c.Panels)-1 { // the shared time axis, labelled once
			b.WriteString(`<g text-anchor="middle" fill="#444">` + "\n")
			for _, v := range ticks(xMax, xStep) {
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", x(v), bottom+15, formatTick(v, xStep))
			}
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", marginLeft+plotWidth/2.0, bottom+34, esc(c.XLabel))
			b.WriteString("</g>\n")
		}
		top = bottom + panelGap
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// niceStep returns a tick spacing of 1, 2 or 5 times a power of ten that
// cuts span into at most maxTicks intervals: the steps a reader can add up
// in their head.
func niceStep(span float64, maxTicks int) float64 {
	if span <= 0 || maxTicks <= 0 {
		return 1
	}
	raw := span / float64(maxTicks)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5} {
		if m*mag >= raw*(1-1e-9) {
			return m * mag
		}
	}
	return 10 * mag
}

// yAxis returns the top of a y axis from 0 to at least v and its tick step:
// the top is the first tick at or above v, so that the highest value never
// leaves the frame; an axis up to 1 when there is nothing above zero.
func yAxis(v float64, maxTicks int) (top, step float64) {
	if !(v > 0) {
		v = 1
	}
	step = niceStep(v, maxTicks)
	return math.Ceil(v/step*(1-1e-9)) * step, step
}

// ticks lists the multiples of step from 0 to hi. Each is computed as i×step,
// not by adding step repeatedly, so that 0.1+0.1+0.1 never becomes a label
// like 0.30000000000000004.
func ticks(hi, step float64) []float64 {
	var out []float64
	for i := 0; float64(i)*step <= hi*(1+1e-9); i++ {
		out = append(out, float64(i)*step)
	}
	return out
}

// formatTick writes v with as many decimals as step needs (step 0.05: two).
func formatTick(v, step float64) string {
	decimals := 0
	if step < 1 {
		decimals = int(math.Ceil(-math.Log10(step) - 1e-9))
	}
	return strconv.FormatFloat(v, 'f', decimals, 64)
}

// maxValue is the largest finite value of any series; 0 when there is none.
func maxValue(series []Series) float64 {
	m := 0.0
	for _, s := range series {
		for _, v := range s.Values {
			if finite(v) && v > m {
				m = v
			}
		}
	}
	return m
}

// path is an SVG path through the finite values, starting a new segment
// (M) after each gap.
func path(values []float64, x, y func(float64) float64) string {
	var b bytes.Buffer
	gap := true
	for i, v := range values {
		if !finite(v) {
			gap = true
			continue
		}
		cmd := "L"
		if gap {
			cmd = "M"
		}
		fmt.Fprintf(&b, "%s%.1f %.1f", cmd, x(float64(i)), y(v))
		gap = false
	}
	return b.String()
}

// isolated lists the values with gaps on both sides: a path segment of one
// point draws nothing, so they get a dot.
func isolated(values []float64) []int {
	var out []int
	for i, v := range values {
		if finite(v) && (i == 0 || !finite(values[i-1])) && (i == len(values)-1 || !finite(values[i+1])) {
			out = append(out, i)
		}
	}
	return out
}

// wrap breaks text into lines of at most width characters at spaces (a
// longer word gets a line of its own): SVG text does not wrap by itself.
func wrap(text string, width int) []string {
	var lines []string
	for _, word := range strings.Fields(text) {
		if n := len(lines); n > 0 && utf8.RuneCountInString(lines[n-1])+1+utf8.RuneCountInString(word) <= width {
			lines[n-1] += " " + word
			continue
		}
		lines = append(lines, word)
	}
	return lines
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// esc escapes text for an SVG text node or attribute.
func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s)) // writing to a bytes.Buffer cannot fail
	return b.String()
}
