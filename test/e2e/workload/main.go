// Command workload is the user application of the end-to-end tests: a static binary that is not part of the
// node image, packed into container images the tests build on the host, so that a pod running it proves the
// image reached the node (loaded, or pulled from the cluster's registry mirror).
//
//	workload -say TEXT [-cat FILE]... [-listen ADDR]
//	workload -soak -listen ADDR -data DIR -peers SELECTOR [-period D]
//
// It prints each FILE (so that a pod's log shows what an image volume holds), then answers every HTTP request
// on ADDR with TEXT, or, without -listen, waits until it is told to stop.
//
// With -soak it is a steady load for long tests: besides echoing payloads POSTed to /echo, it runs a round every
// period that writes a file to DIR and reads it back, exchanges a payload with every other ready pod of the
// label SELECTOR, and writes its counters (rounds, successes, failures and the last error) into a ConfigMap of
// its own (soak-status-<pod>, labelled app=soak-status) with its service account. It needs POD_NAME and
// POD_NAMESPACE from the downward API.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

type files []string

func (f *files) String() string     { return fmt.Sprint(*f) }
func (f *files) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	say := flag.String("say", "workload", "text to print and to answer HTTP requests with")
	listen := flag.String("listen", "", "address to serve HTTP on; empty: sleep forever")
	var cat files
	flag.Var(&cat, "cat", "file to print (repeatable)")
	soakMode := flag.Bool("soak", false, "run the steady load of long tests (see the command's doc)")
	dataDir := flag.String("data", "", "with -soak: directory each round writes to")
	peers := flag.String("peers", "", "with -soak: label selector of the pods to exchange payloads with")
	peerPort := flag.Int("peer-port", 8080, "with -soak: the peers' HTTP port")
	period := flag.Duration("period", 2*time.Second, "with -soak: time between the starts of two rounds")
	flag.Parse()
	fmt.Println(*say)
	for _, f := range cat {
		b, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("%s: %s\n", f, b)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if *listen == "" {
		// Wait for the kubelet's SIGTERM; a bare select{} would be a deadlock to the runtime, as no other
		// goroutine exists.
		<-ctx.Done()
		return
	}
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, *say) })
	http.HandleFunc("/echo", echo)
	srv := &http.Server{Addr: *listen, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.ListenAndServe() }()
	if *soakMode {
		c, err := soakFlags(*dataDir, *peers, *peerPort, *period)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		go func() { errc <- soak(ctx, c) }()
	}
	select {
	case err := <-errc:
		if err != nil && err != http.ErrServerClosed {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case <-ctx.Done():
		srv.Close()
	}
}
