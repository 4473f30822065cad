package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/rulesimg/img/bench/internal/benchkit"
)

// besLoad starts img bes and replays the captured Bazel event stream at a fixed rate,
// first alone and then while lazy pushes of a 1 GiB image run on the same machine.
func (b *bench) besLoad() error {
	s := newScenario(fmt.Sprintf("img bes: acknowledgement latency at %.0f events/s", b.besRate))
	b.results = append(b.results, s)
	duration := b.besDuration
	if duration == 0 {
		duration = 20 * time.Second
	}

	events, err := readEventStream(b.besStream)
	if err != nil {
		return err
	}
	cache, err := b.remoteCache()
	if err != nil {
		return err
	}
	image, notes, err := b.sharedImage()
	if err != nil {
		return err
	}
	s.setup = append(s.setup, notes...)
	request, err := uploadLazyRequest(cache.Endpoint(), image.request)
	if err != nil {
		return err
	}
	events, rewritten, err := pointRequestsAt(events, request)
	if err != nil {
		return err
	}
	s.setup = append(s.setup,
		fmt.Sprintf("captured stream: %d events from %s, replayed as a new invocation per round.", len(events), b.besStream),
		fmt.Sprintf("The URIs of its %d push request files point at a copy of $WORK/get-request.json with strategy lazy in the cache, "+
			"so every push job reads it and ends as skipped.", rewritten))

	var bes *benchkit.Server
	var addr string
	bes, err = benchkit.RetryPorts(func() (*benchkit.Server, error) {
		port, err := benchkit.FreePort()
		if err != nil {
			return nil, err
		}
		httpPort, err := benchkit.FreePort()
		if err != nil {
			return nil, err
		}
		addr = "127.0.0.1:" + strconv.Itoa(port)
		dir := filepath.Join(b.work, "bes")
		args := []string{"bes", "--address", "127.0.0.1", "--port", strconv.Itoa(port), "--http-port", strconv.Itoa(httpPort),
			"--data-dir", filepath.Join(dir, "data"), "--cas-endpoint", cache.Endpoint(), "--log-level", "warn"}
		s.commands["img bes"] = "$BIN/img " + joinArgs(args)
		return benchkit.StartServer("img bes", filepath.Join(b.work, "bes.log"), b.img, args, nil, benchkit.TCPAccepts(addr))
	})
	if err != nil {
		return err
	}
	defer bes.Stop()

	const streams = 4
	s.extra = append(s.extra,
		fmt.Sprintf("Load client: this program, in process, open loop at %.0f events/s in total: a new round (one stream replaying the capture) every %d/rate seconds, each sending at rate/%d, %s per phase. "+
			"*ack* runs from sending an event to its acknowledgement; *from schedule* runs from the moment the fixed rate made the event due.", b.besRate, len(events), streams, duration),
		"",
		"| phase | events | rounds | achieved events/s | ack p50 | ack p99 | ack max | from schedule p99 | stream errors | img bes CPU |",
		"|---|---|---|---|---|---|---|---|---|---|")

	phase := func(name string) error {
		cpu := benchkit.ProcessCPU([]int{bes.PID()})
		result, err := replayAtRate(addr, events, b.besRate, duration, streams, "bench-"+name)
		if err != nil {
			return err
		}
		cpu = benchkit.ProcessCPU([]int{bes.PID()}) - cpu
		if len(result.Ack) == 0 {
			return fmt.Errorf("phase %s: no event was acknowledged; first error: %v", name, result.FirstErr)
		}
		s.extra = append(s.extra, fmt.Sprintf("| %s | %d | %d | %.0f | %s | %s | %s | %s | %d | %.2fs |", name, result.Events, result.Rounds, result.rate(),
			formatLatency(percentile(result.Ack, 0.5)), formatLatency(percentile(result.Ack, 0.99)), formatLatency(result.Ack[len(result.Ack)-1]),
			formatLatency(percentile(result.Scheduled, 0.99)), result.Errors, cpu.Seconds()))
		if result.FirstErr != nil {
			s.notes = append(s.notes, fmt.Sprintf("phase %s, first stream error: %v", name, result.FirstErr))
		}
		fmt.Fprintf(os.Stderr, "registrybench: bes %s: %d events at %.0f/s, ack p50 %s p99 %s\n", name, result.Events, result.rate(),
			formatLatency(percentile(result.Ack, 0.5)), formatLatency(percentile(result.Ack, 0.99)))
		if p99 := percentile(result.Ack, 0.99); p99 >= 10*time.Millisecond {
			s.notes = append(s.notes, fmt.Sprintf("phase %s: ack p99 %s (target < 10 ms: MISSED)", name, formatLatency(p99)))
		} else {
			s.notes = append(s.notes, fmt.Sprintf("phase %s: ack p99 %s (target < 10 ms: met)", name, formatLatency(p99)))
		}
		return nil
	}

	if err := phase("idle"); err != nil {
		return err
	}

	// Background pushes: img push --strategy lazy of the 1 GiB image into a new
	// distribution registry, again and again until the phase ends.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var pushes int
	var pushErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			reg, err := benchkit.StartDistribution(b.tool("registry"), filepath.Join(b.work, "bes-push-registry"))
			if err != nil {
				pushErr = err
				return
			}
			_, err = b.once(b.img, "push", "--request", image.request, "--strategy", "lazy", "--remote-cache", cache.Endpoint(), "--registry", reg.Addr, "--quiet")
			reg.StopAndRemove()
			if err != nil {
				pushErr = err
				return
			}
			pushes++
		}
	}()
	err = phase("lazy pushes running")
	close(stop)
	wg.Wait()
	if err != nil {
		return err
	}
	if pushErr != nil {
		return fmt.Errorf("background push: %w", pushErr)
	}
	s.commands["background push"] = fmt.Sprintf("$BIN/img push --request $WORK/get-request.json --strategy lazy --remote-cache %s --registry 127.0.0.1:P --quiet (a new distribution registry each time)", cache.Endpoint())
	s.extra = append(s.extra, "", fmt.Sprintf("During the second phase %d lazy pushes of the 1 GiB image finished (the last one may have run past the phase).", pushes))
	return nil
}
