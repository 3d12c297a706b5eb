// Command workload is the user application of the end-to-end tests: a static binary that is not part of the
// node image, packed into container images the tests build on the host, so that a pod running it proves the
// image reached the node (loaded, or pulled from the cluster's registry mirror).
//
//	workload -say TEXT [-cat FILE]... [-listen ADDR]
//
// It prints each FILE (so that a pod's log shows what an image volume holds), then answers every HTTP request
// on ADDR with TEXT, or, without -listen, waits until it is told to stop.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

type files []string

func (f *files) String() string     { return fmt.Sprint(*f) }
func (f *files) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	say := flag.String("say", "workload", "text to print and to answer HTTP requests with")
	listen := flag.String("listen", "", "address to serve HTTP on; empty: sleep forever")
	var cat files
	flag.Var(&cat, "cat", "file to print (repeatable)")
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
	if *listen == "" {
		// Wait for the kubelet's SIGTERM; a bare select{} would be a deadlock to the runtime, as no other
		// goroutine exists.
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
		<-stop
		return
	}
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, *say) })
	if err := http.ListenAndServe(*listen, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
