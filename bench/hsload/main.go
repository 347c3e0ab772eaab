// hsload: the load client of bench/ for what wrk cannot do.
//
// -mode hs (default): full TLS handshakes. Each of -c workers loops: dial, handshake, send
// "GET <path> HTTP/1.0", read to EOF, close. No ClientSessionCache, so it never resumes (wrk and
// h2load resume on reconnect and so measure resumption, not full handshakes). With -resume each
// worker keeps its own one-entry session cache (a returning client): every connection after its
// first offers the last session (ID, ticket or TLS 1.3 PSK) and "resumed" counts the ones taken.
//
// -mode idle: opens -n keep-alive TLS connections (-c at a time); on each it POSTs -up bytes to
// /sink and GETs -path (the download), then leaves the connection open and idle. Prints one JSON
// line when all are open, holds them until stdin closes (or -hold passes), then closes them.
// That is the memory-per-idle-connection workload: the proxy's buffers have carried traffic.
//
// Both modes print one JSON line with counts, rate and latency.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("a", "127.0.0.1:443", "host:port")
	path := flag.String("p", "/ok", "request path (hs) or download path (idle)")
	conc := flag.Int("c", 32, "concurrent connections")
	dur := flag.Duration("d", 5*time.Second, "duration (hs)")
	tls13 := flag.Bool("tls13", false, "allow TLS 1.3 (default: TLS 1.2 only)")
	mode := flag.String("mode", "hs", "hs | idle")
	n := flag.Int("n", 5000, "connections to hold open (idle)")
	up := flag.Int("up", 65536, "bytes to upload per connection (idle)")
	hold := flag.Duration("hold", 120*time.Second, "longest hold (idle)")
	total := flag.Int("total", 0, "stop after this many connections (hs; 0: run for -d)")
	resume := flag.Bool("resume", false, "hs: each worker offers its last session (a returning client)")
	flag.Parse()
	cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12}
	if *tls13 {
		cfg.MaxVersion = tls.VersionTLS13
	}
	if *mode == "idle" {
		idle(*addr, *path, *conc, *n, *up, *hold, cfg)
		return
	}
	handshakes(*addr, *path, *conc, *dur, int64(*total), cfg, *resume)
}

func handshakes(addr, path string, conc int, dur time.Duration, limit int64, shared *tls.Config, resume bool) {
	req := []byte("GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n")
	var ok, errs, resumed, started int64
	var mu sync.Mutex
	var lats []float64
	var first error
	var cipher, proto string
	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < conc; i++ {
		wg.Add(1)
		cfg := shared
		if resume {
			cfg = shared.Clone()
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
		}
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			local := make([]float64, 0, 4096)
			for time.Now().Before(deadline) {
				if limit > 0 && atomic.AddInt64(&started, 1) > limit {
					return
				}
				t0 := time.Now()
				c, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", addr, cfg)
				if err == nil {
					c.SetDeadline(time.Now().Add(30 * time.Second))
					_, err = c.Write(req)
					got := 0
					for err == nil {
						var k int
						k, err = c.Read(buf)
						got += k
					}
					if err == io.EOF && got > 0 {
						err = nil
					}
					st := c.ConnectionState()
					if st.DidResume {
						atomic.AddInt64(&resumed, 1)
					}
					mu.Lock()
					if cipher == "" {
						cipher, proto = tls.CipherSuiteName(st.CipherSuite), fmt.Sprintf("%x", st.Version)
					}
					mu.Unlock()
					c.Close()
				}
				if err != nil {
					atomic.AddInt64(&errs, 1)
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					continue
				}
				atomic.AddInt64(&ok, 1)
				local = append(local, float64(time.Since(t0).Microseconds())/1000.0)
			}
			mu.Lock()
			lats = append(lats, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	out := map[string]interface{}{"ok": ok, "errors": errs, "seconds": el, "rps": float64(ok) / el,
		"cipher": cipher, "version": proto, "resumed": resumed}
	addLatency(out, lats)
	if first != nil {
		out["first_error"] = first.Error()
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

func addLatency(out map[string]interface{}, lats []float64) {
	sort.Float64s(lats)
	pct := func(q float64) float64 {
		if len(lats) == 0 {
			return 0
		}
		return lats[int(q*float64(len(lats)-1))]
	}
	out["p50_ms"], out["p99_ms"] = pct(0.5), pct(0.99)
}

// exchange sends one request on a keep-alive connection and reads the whole answer.
func exchange(c *tls.Conn, r *bufio.Reader, req []byte) error {
	if _, err := c.Write(req); err != nil {
		return err
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return err
}

func idle(addr, path string, conc, n, up int, hold time.Duration, cfg *tls.Config) {
	post := append([]byte(fmt.Sprintf("POST /sink HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n", up)),
		bytes.Repeat([]byte("x"), up)...)
	get := []byte("GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n")
	conns := make([]*tls.Conn, n)
	var ok, errs int64
	var mu sync.Mutex
	var first error
	var lats []float64
	next := int64(-1)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := atomic.AddInt64(&next, 1)
				if i >= int64(n) {
					return
				}
				t0 := time.Now()
				c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
				if err == nil {
					c.SetDeadline(time.Now().Add(30 * time.Second))
					r := bufio.NewReader(c)
					err = exchange(c, r, post)
					if err == nil {
						err = exchange(c, r, get)
					}
					c.SetDeadline(time.Time{})
					if err != nil {
						c.Close()
					}
				}
				mu.Lock()
				if err != nil {
					errs++
					if first == nil {
						first = err
					}
				} else {
					ok++
					conns[i] = c
					lats = append(lats, float64(time.Since(t0).Microseconds())/1000.0)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	out := map[string]interface{}{"ok": ok, "errors": errs, "seconds": time.Since(start).Seconds(), "open": ok}
	addLatency(out, lats)
	if first != nil {
		out["first_error"] = first.Error()
	}
	json.NewEncoder(os.Stdout).Encode(out)
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(done) }()
	select {
	case <-done:
	case <-time.After(hold):
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}
