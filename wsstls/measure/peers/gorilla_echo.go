// gorilla_echo: the seed report's reference, a WebSocket echo server on gorilla/websocket.
//
// One goroutine per connection reads a message and writes it back with the same type
// (ReadMessage / WriteMessage, as gorilla's own echo example); Go's crypto/tls runs in
// that goroutine, so TLS spreads over GOMAXPROCS cores.  Pings are answered and close
// frames echoed by gorilla's default handlers; compression is off.
//
// The command line is the Python peers' (common.py):
//
//	gorilla_echo --host 127.0.0.1 --port 0 [--tls --cert F --key F] [--max-size BYTES]
//
// stdout gets exactly one line when the server is ready, "listening on ws://HOST:PORT/"
// (or wss://); stderr one line naming Go, GOMAXPROCS and TLS.  SIGINT/SIGTERM: stop
// listening, send close 1001 to open connections, wait up to 2 s for them, exit 0.
// The bench builds it (GOPATH mode, Debian's golang-github-gorilla-websocket-dev) into
// a cache and pins it with the process's CPU affinity and GOMAXPROCS.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

const closeGrace = 2 * time.Second

type registry struct {
	mu    sync.Mutex
	conns map[*websocket.Conn]struct{}
	wg    sync.WaitGroup
}

func (r *registry) add(c *websocket.Conn) {
	r.mu.Lock()
	r.conns[c] = struct{}{}
	r.mu.Unlock()
}

func (r *registry) remove(c *websocket.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

func (r *registry) all() []*websocket.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*websocket.Conn, 0, len(r.conns))
	for c := range r.conns {
		out = append(out, c)
	}
	return out
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gorilla_echo: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to bind")
	port := flag.Int("port", 0, "port to bind, 0 = any free port")
	useTLS := flag.Bool("tls", false, "serve wss:// (needs --cert and --key)")
	certFile := flag.String("cert", "", "PEM certificate (chain) file for --tls")
	keyFile := flag.String("key", "", "PEM private key file for --tls")
	maxSize := flag.Int64("max-size", 16<<20, "largest message accepted")
	flag.Parse()
	if flag.NArg() != 0 {
		fail("unexpected argument %q", flag.Arg(0))
	}
	if *port < 0 || *port > 65535 {
		fail("--port must be 0 .. 65535, got %d", *port)
	}
	if *useTLS && (*certFile == "" || *keyFile == "") {
		fail("--tls needs --cert and --key")
	}
	if !*useTLS && (*certFile != "" || *keyFile != "") {
		fail("--cert/--key given without --tls")
	}
	if *maxSize <= 0 {
		fail("--max-size must be positive")
	}

	ln, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		fail("%v", err)
	}
	addr := ln.Addr().String()
	scheme, tlsInfo := "ws", "off"
	if *useTLS {
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fail("%v", err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})
		scheme, tlsInfo = "wss", "crypto/tls"
	}

	live := &registry{conns: map[*websocket.Conn]struct{}{}}
	upgrader := websocket.Upgrader{
		ReadBufferSize:  4096,
		WriteBufferSize: 4096,
		CheckOrigin:     func(*http.Request) bool { return true },
	}
	echo := func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return // the upgrader answered the request
		}
		live.wg.Add(1)
		defer live.wg.Done()
		live.add(c)
		defer live.remove(c)
		defer c.Close()
		c.SetReadLimit(*maxSize)
		for {
			kind, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(kind, msg); err != nil {
				return
			}
		}
	}
	srv := &http.Server{Handler: http.HandlerFunc(echo), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()

	fmt.Printf("listening on %s://%s/\n", scheme, addr)
	os.Stdout.Sync()
	fmt.Fprintf(os.Stderr, "gorilla_echo: %s, GOMAXPROCS %d; tls %s; pid %d\n",
		runtime.Version(), runtime.GOMAXPROCS(0), tlsInfo, os.Getpid())

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	_ = srv.Close() // stops listening; hijacked (WebSocket) connections are ours to close
	deadline := time.Now().Add(closeGrace)
	bye := websocket.FormatCloseMessage(websocket.CloseGoingAway, "server shutdown")
	for _, c := range live.all() {
		_ = c.WriteControl(websocket.CloseMessage, bye, deadline) // safe beside WriteMessage
	}
	done := make(chan struct{})
	go func() { live.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(closeGrace):
		for _, c := range live.all() {
			_ = c.Close()
		}
	}
}
