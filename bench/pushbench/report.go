package main

import (
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/rulesimg/img/bench/internal/benchkit"
)

// describeMachine returns Markdown lines on the machine and the versions of every tool.
func describeMachine(b *bench) []string {
	return []string{
		"- date: " + time.Now().UTC().Format("2006-01-02 15:04 MST"),
		fmt.Sprintf("- machine: %d CPUs (%s), %s memory, Linux %s", runtime.NumCPU(), benchkit.CPUModel(), benchkit.MemTotal(), benchkit.KernelRelease()),
		"- load average (1, 5, 15 min) at the start: " + benchkit.LoadAverage(),
		"- Go: " + runtime.Version(),
		"- img: " + benchkit.Version(b.img, "version") + ", built from commit " + benchkit.Commit(),
		"- crane: " + benchkit.Version(b.tool("crane"), "version"),
		"- regctl: " + benchkit.Version(b.tool("regctl"), "version", "--format", "{{.VCSTag}}"),
		"- skopeo: " + benchkit.Version("skopeo", "--version"),
		"- registry: " + benchkit.Version(b.tool("registry"), "--version"),
		"- curl: " + benchkit.Version("curl", "--version"),
	}
}

// writeReport writes the machine, then per comparison the commands, a table of medians, the
// ratios against the targets and every sample.
func writeReport(w io.Writer, machine []string, results []*scenario) {
	fmt.Fprintln(w, "### Machine and versions")
	fmt.Fprintln(w)
	for _, line := range machine {
		fmt.Fprintln(w, line)
	}

	for _, s := range results {
		fmt.Fprintf(w, "\n### %s\n\n", s.title)
		for _, line := range s.setup {
			fmt.Fprintf(w, "- %s\n", line)
		}
		fmt.Fprintln(w, "\nCommands (ports of the last run):")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "```")
		for _, tool := range s.order {
			if line, ok := s.commands[tool]; ok {
				fmt.Fprintln(w, line)
			}
		}
		fmt.Fprintln(w, "```")

		fmt.Fprintln(w)
		writeMedians(w, s)
		fmt.Fprintln(w)
		writeRatios(w, s)
		for _, note := range s.notes {
			fmt.Fprintf(w, "- note: %s\n", note)
		}
		fmt.Fprintln(w)
		writeSamples(w, s)
	}
}

func writeMedians(w io.Writer, s *scenario) {
	fmt.Fprintln(w, "| client | runs | wall (median) | wall (min–max) | client CPU user+sys | peak RSS | disk writes (write_bytes) | server CPU |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, tool := range s.order {
		samples := s.of(tool)
		if len(samples) == 0 {
			continue
		}
		walls := column(samples, func(x benchkit.Sample) time.Duration { return x.Wall })
		fmt.Fprintf(w, "| %s | %d | %s | %s–%s | %s | %s | %s | %s |\n", tool, len(samples),
			seconds(benchkit.Median(walls)), seconds(minOf(walls)), seconds(maxOf(walls)),
			seconds(benchkit.Median(column(samples, benchkit.Sample.CPU))),
			mebibytes(benchkit.Median(column(samples, func(x benchkit.Sample) int64 { return x.MaxRSS }))),
			mebibytes(benchkit.Median(column(samples, func(x benchkit.Sample) int64 { return x.WriteBytes }))),
			seconds(benchkit.Median(column(samples, func(x benchkit.Sample) time.Duration { return x.ServerCPU }))))
	}
}

// ratioTarget is a ratio of medians with a target: numerator / denominator ≤ target.
type ratioTarget struct {
	what        string
	numerator   string
	denominator string
	value       func(benchkit.Sample) time.Duration
	target      float64
}

func wallTime(s benchkit.Sample) time.Duration {
	return s.Wall
}

func writeRatios(w io.Writer, s *scenario) {
	for _, r := range s.ratios {
		num, den := s.of(r.numerator), s.of(r.denominator)
		if len(num) == 0 || len(den) == 0 {
			continue
		}
		ratio := float64(benchkit.Median(column(num, r.value))) / float64(benchkit.Median(column(den, r.value)))
		fmt.Fprintf(w, "- %s / %s, median %s: **%.2f** (target ≤ %.1f: %s)\n", r.numerator, r.denominator, r.what, ratio, r.target, verdict(ratio <= r.target))
	}

	if lazy := s.of("img push --strategy lazy"); len(lazy) > 0 {
		rss := benchkit.Median(column(lazy, func(x benchkit.Sample) int64 { return x.MaxRSS }))
		writes := maxOf(column(lazy, func(x benchkit.Sample) int64 { return x.WriteBytes }))
		fmt.Fprintf(w, "- img lazy peak RSS, median: **%s** (target < 100 MiB: %s)\n", mebibytes(rss), verdict(rss < 100<<20))
		fmt.Fprintf(w, "- img lazy disk writes, max over runs: **%d bytes** (target: no layer bytes: %s)\n", writes, verdict(writes < 1<<20))
	}
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

func writeSamples(w io.Writer, s *scenario) {
	fmt.Fprintln(w, "<details><summary>every run</summary>")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| run | client | wall | user | sys | peak RSS | disk writes | server CPU |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, x := range s.samples {
		fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %s | %s | %s |\n", x.Run, x.Tool, seconds(x.Wall), seconds(x.User), seconds(x.Sys),
			mebibytes(x.MaxRSS), mebibytes(x.WriteBytes), seconds(x.ServerCPU))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "</details>")
}

func column[T int64 | time.Duration](samples []benchkit.Sample, value func(benchkit.Sample) T) []T {
	out := make([]T, len(samples))
	for i, s := range samples {
		out[i] = value(s)
	}
	return out
}

func minOf[T int64 | time.Duration](values []T) T {
	out := values[0]
	for _, v := range values {
		out = min(out, v)
	}
	return out
}

func maxOf[T int64 | time.Duration](values []T) T {
	out := values[0]
	for _, v := range values {
		out = max(out, v)
	}
	return out
}

func seconds(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func mebibytes(n int64) string {
	return benchkit.FormatMiB(float64(n))
}
