// Command loadgen is the HTTP load generator of sluicegate's benchmarks (bench/bridge_overhead.py).
//
// Two modes, one JSON report on stdout:
//
//	open loop   -mode open -rate R: request i is due at t0 + i/R whatever happened before it. Its
//	            latency is measured from that intended time, not from when it actually left, so a
//	            server (or this generator) that falls behind shows up as latency instead of being
//	            hidden by sending less (no coordinated omission).
//	closed loop -mode closed -concurrency C: C workers, each sends its next request when the
//	            previous one answered; latency from the send.
//
// The first -warmup of the schedule is sent but not counted. Everything is bounded: at most
// (warmup+duration)*rate requests in open loop, -max-inflight requests in flight (a due request
// beyond that is not sent and counts as the error "shed"), and each request gives up after
// -timeout, so a run ends by warmup+duration+timeout. Only the standard library is used.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type config struct {
	url         string
	body        []byte
	headers     http.Header
	mode        string
	rate        float64
	concurrency int
	duration    time.Duration
	warmup      time.Duration
	timeout     time.Duration
	maxInflight int
	expect      string
}

// result of one request; latency counts from the intended send time.
type result struct {
	intended time.Time
	done     time.Time
	latency  time.Duration
	lag      time.Duration // how late the generator actually sent (open loop)
	errKind  string        // "" when the request succeeded
	sent     bool
}

type summary struct {
	Mode          string             `json:"mode"`
	Rate          float64            `json:"rate,omitempty"`
	Concurrency   int                `json:"concurrency,omitempty"`
	DurationS     float64            `json:"duration_s"`
	WarmupS       float64            `json:"warmup_s"`
	Scheduled     int                `json:"scheduled"`
	OK            int                `json:"ok"`
	Errors        int                `json:"errors"`
	ErrorKinds    map[string]int     `json:"error_kinds"`
	AchievedRPS   float64            `json:"achieved_rps"`
	LatencyMS     map[string]float64 `json:"latency_ms"`
	SendLagMS     map[string]float64 `json:"send_lag_ms,omitempty"`
	QuarterP50MS  []float64          `json:"quarter_p50_ms"`
	QuarterP99MS  []float64          `json:"quarter_p99_ms"`
	WallS         float64            `json:"wall_s"`
	WarmupOK      int                `json:"warmup_ok"`
	WarmupErrors  int                `json:"warmup_errors"`
	MaxInflight   int                `json:"max_inflight_seen"`
	InflightLimit int                `json:"inflight_limit"`
}

func main() {
	cfg, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	client := newClient(cfg)
	start := time.Now()
	var results []result
	var t0 time.Time
	var peak int64
	if cfg.mode == "open" {
		results, t0, peak = openLoop(cfg, client)
	} else {
		results, t0, peak = closedLoop(cfg, client)
	}
	out := summarize(cfg, results, t0, int(peak))
	out.WallS = time.Since(start).Seconds()
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ", ") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }

func parseFlags() (config, error) {
	var cfg config
	var bodyFile string
	var headers headerFlags
	flag.StringVar(&cfg.url, "url", "", "target URL (POST)")
	flag.StringVar(&bodyFile, "body-file", "", "file holding the request body")
	flag.Var(&headers, "H", "request header 'Name: value' (repeatable)")
	flag.StringVar(&cfg.mode, "mode", "open", "open or closed")
	flag.Float64Var(&cfg.rate, "rate", 0, "open loop: offered requests per second")
	flag.IntVar(&cfg.concurrency, "concurrency", 0, "closed loop: workers")
	flag.DurationVar(&cfg.duration, "duration", 20*time.Second, "measured part of the run")
	flag.DurationVar(&cfg.warmup, "warmup", 3*time.Second, "unmeasured start of the run")
	flag.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "per-request timeout")
	flag.IntVar(&cfg.maxInflight, "max-inflight", 4000, "open loop: due requests beyond this are shed")
	flag.StringVar(&cfg.expect, "expect", `"choices"`, "a 200 body must contain this")
	flag.Parse()
	if cfg.url == "" || bodyFile == "" {
		return cfg, errors.New("-url and -body-file are required")
	}
	body, err := os.ReadFile(bodyFile)
	if err != nil {
		return cfg, err
	}
	cfg.body = body
	cfg.headers = http.Header{"Content-Type": {"application/json"}}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			return cfg, fmt.Errorf("header %q is not 'Name: value'", h)
		}
		cfg.headers.Set(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	switch {
	case cfg.mode == "open" && cfg.rate <= 0:
		return cfg, errors.New("open loop needs -rate > 0")
	case cfg.mode == "closed" && cfg.concurrency <= 0:
		return cfg, errors.New("closed loop needs -concurrency > 0")
	case cfg.mode != "open" && cfg.mode != "closed":
		return cfg, fmt.Errorf("unknown -mode %q", cfg.mode)
	}
	return cfg, nil
}

func newClient(cfg config) *http.Client {
	idle := cfg.maxInflight
	if cfg.concurrency > idle {
		idle = cfg.concurrency
	}
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: cfg.timeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        idle,
		MaxIdleConnsPerHost: idle,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	return &http.Client{Transport: transport, Timeout: cfg.timeout}
}

// do sends one request and classifies the outcome ("" for success).
func do(cfg config, client *http.Client) string {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, cfg.url,
		bytes.NewReader(cfg.body))
	if err != nil {
		return "request"
	}
	req.Header = cfg.headers.Clone()
	resp, err := client.Do(req)
	if err != nil {
		var netErr net.Error
		if errors.As(err, &netErr) && netErr.Timeout() {
			return "timeout"
		}
		return "connection"
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "read"
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("status_%d", resp.StatusCode)
	}
	if cfg.expect != "" && !bytes.Contains(body, []byte(cfg.expect)) {
		return "bad_body"
	}
	return ""
}

func openLoop(cfg config, client *http.Client) ([]result, time.Time, int64) {
	total := int(math.Round((cfg.warmup + cfg.duration).Seconds() * cfg.rate))
	results := make([]result, total)
	period := float64(time.Second) / cfg.rate
	var inflight, peak atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now().Add(50 * time.Millisecond)
	for i := 0; i < total; i++ {
		intended := t0.Add(time.Duration(float64(i) * period))
		if wait := time.Until(intended); wait > 0 {
			time.Sleep(wait)
		}
		r := &results[i]
		r.intended = intended
		if inflight.Load() >= int64(cfg.maxInflight) {
			r.errKind, r.done = "shed", time.Now()
			continue
		}
		n := inflight.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.lag = time.Since(r.intended)
			r.sent = true
			r.errKind = do(cfg, client)
			r.done = time.Now()
			r.latency = r.done.Sub(r.intended)
			inflight.Add(-1)
		}()
	}
	wg.Wait()
	return results, t0, peak.Load()
}

func closedLoop(cfg config, client *http.Client) ([]result, time.Time, int64) {
	t0 := time.Now()
	end := t0.Add(cfg.warmup + cfg.duration)
	perWorker := make([][]result, cfg.concurrency)
	var wg sync.WaitGroup
	for w := 0; w < cfg.concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				sent := time.Now()
				if !sent.Before(end) {
					return
				}
				kind := do(cfg, client)
				done := time.Now()
				perWorker[w] = append(perWorker[w], result{
					intended: sent, done: done, latency: done.Sub(sent), errKind: kind, sent: true,
				})
			}
		}(w)
	}
	wg.Wait()
	var results []result
	for _, rs := range perWorker {
		results = append(results, rs...)
	}
	return results, t0, int64(cfg.concurrency)
}

// summarize counts what was due from t0+warmup on; earlier requests are the warm-up.
func summarize(cfg config, results []result, t0 time.Time, peak int) summary {
	out := summary{
		Mode: cfg.mode, DurationS: cfg.duration.Seconds(), WarmupS: cfg.warmup.Seconds(),
		ErrorKinds: map[string]int{}, MaxInflight: peak,
	}
	if cfg.mode == "open" {
		out.Rate, out.InflightLimit = cfg.rate, cfg.maxInflight
	} else {
		out.Concurrency = cfg.concurrency
	}
	if len(results) == 0 {
		return out
	}
	measureFrom := t0.Add(cfg.warmup)
	var latencies, lags []float64
	quarters := make([][]float64, 4) // successes by quarter of the measured schedule
	var lastDone time.Time
	for _, r := range results {
		if r.intended.Before(measureFrom) {
			if r.errKind == "" {
				out.WarmupOK++
			} else {
				out.WarmupErrors++
			}
			continue
		}
		out.Scheduled++
		if r.sent {
			lags = append(lags, ms(r.lag))
		}
		if r.errKind != "" {
			out.Errors++
			out.ErrorKinds[r.errKind]++
			continue
		}
		out.OK++
		latencies = append(latencies, ms(r.latency))
		q := int(4 * r.intended.Sub(measureFrom).Seconds() / cfg.duration.Seconds())
		quarters[max(0, min(q, 3))] = append(quarters[max(0, min(q, 3))], ms(r.latency))
		lastDone = maxTime(lastDone, r.done)
	}
	if out.OK > 0 {
		window := lastDone.Sub(measureFrom).Seconds()
		if window < cfg.duration.Seconds() {
			window = cfg.duration.Seconds()
		}
		out.AchievedRPS = float64(out.OK) / window
	}
	out.LatencyMS = percentiles(latencies)
	for _, q := range quarters { // a queue that grows shows as quarters getting slower
		p := percentiles(q)
		out.QuarterP50MS = append(out.QuarterP50MS, p["p50"])
		out.QuarterP99MS = append(out.QuarterP99MS, p["p99"])
	}
	if cfg.mode == "open" {
		out.SendLagMS = percentiles(lags)
	}
	return out
}

func percentiles(values []float64) map[string]float64 {
	if len(values) == 0 {
		return map[string]float64{}
	}
	sort.Float64s(values)
	at := func(q float64) float64 { // nearest rank
		idx := int(math.Ceil(q*float64(len(values)))) - 1
		return round3(values[max(0, min(idx, len(values)-1))])
	}
	sum := 0.0
	for _, v := range values {
		sum += v
	}
	return map[string]float64{
		"p50": at(0.50), "p90": at(0.90), "p95": at(0.95), "p99": at(0.99), "p999": at(0.999),
		"max": round3(values[len(values)-1]), "min": round3(values[0]),
		"mean": round3(sum / float64(len(values))),
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
