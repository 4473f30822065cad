package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rulesimg/img/bench/internal/benchkit"
)

// besLoad starts img bes and replays the captured Bazel event stream at a fixed rate in
// three phases. The first runs alone. In the second, lazy pushes of a 1 GiB image run on the
// same machine into a registry whose storage is in b.tmpfs, so its writes do not reach this
// machine's disk, as with a registry on another machine. In the third, the registry writes
// them to the disk that img bes syncs its job store to.
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
		args = append(args, strings.Fields(b.besArgs)...)
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
		"*disk fdatasync* comes from a probe in this program that overwrites one 4 KiB block of a file in $WORK and fdatasyncs it every 10 ms during the phase: "+
			"the cost of any durable write on that disk at the time, and so a floor under the acknowledgement of an event that creates a push job. "+
			"Each phase starts after a sync(2), so that the writeback of files from the setup or the phase before falls outside it.",
		"",
		"| phase | events | rounds | achieved events/s | ack p50 | ack p99 | ack max | from schedule p99 | stream errors | img bes CPU | disk fdatasync p50 | disk fdatasync p99 | disk fdatasync max |",
		"|---|---|---|---|---|---|---|---|---|---|---|---|---|")

	phase := func(name string) error {
		// The setup has just written the 1 GiB image to the cache. Without this sync the
		// kernel writes it back once it has been dirty for vm.dirty_expire_centisecs (30 s
		// by default), in the middle of a phase, and every sync on the disk waits for it.
		syscall.Sync()
		cpu := benchkit.ProcessCPU([]int{bes.PID()})
		stopProbe := make(chan struct{})
		probe := startSyncProbe(filepath.Join(b.work, "sync-probe"), 10*time.Millisecond, stopProbe)
		result, err := replayAtRate(addr, events, b.besRate, duration, streams, "bench-"+name)
		close(stopProbe)
		syncs, probeErr := probe.wait()
		if err != nil {
			return err
		}
		if probeErr != nil {
			return fmt.Errorf("phase %s: disk probe: %w", name, probeErr)
		}
		cpu = benchkit.ProcessCPU([]int{bes.PID()}) - cpu
		if len(result.Ack) == 0 {
			return fmt.Errorf("phase %s: no event was acknowledged; first error: %v", name, result.FirstErr)
		}
		s.extra = append(s.extra, fmt.Sprintf("| %s | %d | %d | %.0f | %s | %s | %s | %s | %d | %.2fs | %s | %s | %s |", name, result.Events, result.Rounds, result.rate(),
			formatLatency(percentile(result.Ack, 0.5)), formatLatency(percentile(result.Ack, 0.99)), formatLatency(result.Ack[len(result.Ack)-1]),
			formatLatency(percentile(result.Scheduled, 0.99)), result.Errors, cpu.Seconds(),
			formatLatency(percentile(syncs, 0.5)), formatLatency(percentile(syncs, 0.99)), formatLatency(percentile(syncs, 1))))
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

	memory := func(dir string) (*benchkit.Registry, error) {
		return benchkit.StartDistribution(b.tool("registry"), filepath.Join(b.tmpfs, filepath.Base(b.work)+"-"+filepath.Base(dir)))
	}
	disk := func(dir string) (*benchkit.Registry, error) {
		return benchkit.StartDistribution(b.tool("registry"), dir)
	}
	pushes := map[string]int{}
	for _, background := range []struct {
		name  string
		start func(dir string) (*benchkit.Registry, error)
	}{
		{"lazy pushes, registry on tmpfs", memory},
		{"lazy pushes, registry on this disk", disk},
	} {
		count, err := b.whilePushing(image.request, cache.Endpoint(), background.start, func() error { return phase(background.name) })
		if err != nil {
			return err
		}
		pushes[background.name] = count
	}
	s.commands["background push"] = fmt.Sprintf("$BIN/img push --request $WORK/get-request.json --strategy lazy --remote-cache %s --registry 127.0.0.1:P --quiet (a new distribution registry each time, with its storage in %s or in $WORK)", cache.Endpoint(), b.tmpfs)
	s.extra = append(s.extra, "", fmt.Sprintf("Lazy pushes of the 1 GiB image that finished during the phases (the last one may have run past its phase): %d with the registry on tmpfs, %d with the registry on disk.",
		pushes["lazy pushes, registry on tmpfs"], pushes["lazy pushes, registry on this disk"]))
	return nil
}

// whilePushing runs measure while a loop pushes the image of request with img push
// --strategy lazy into a new distribution registry from start each time, and returns how
// many pushes finished.
func (b *bench) whilePushing(request, cache string, start func(dir string) (*benchkit.Registry, error), measure func() error) (int, error) {
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
			reg, err := start(filepath.Join(b.work, "bes-push-registry"))
			if err != nil {
				pushErr = err
				return
			}
			_, err = b.once(b.img, "push", "--request", request, "--strategy", "lazy", "--remote-cache", cache, "--registry", reg.Addr, "--quiet")
			reg.StopAndRemove()
			if err != nil {
				pushErr = err
				return
			}
			pushes++
		}
	}()
	err := measure()
	close(stop)
	wg.Wait()
	if err != nil {
		return pushes, err
	}
	if pushErr != nil {
		return pushes, fmt.Errorf("background push: %w", pushErr)
	}
	return pushes, nil
}
