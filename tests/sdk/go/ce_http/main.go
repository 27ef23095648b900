// ce_http: an HTTP receiver on the CloudEvents Go SDK's HTTP binding
// (github.com/cloudevents/sdk-go/v2/protocol/http), for tests/e2e/test_http_sink.py. Each
// POST is read with NewEventsFromHTTPRequest, which takes every content mode of the HTTP
// binding (binary, structured, batched) as the request's Content-Type says; each event must
// validate. It answers 200 and prints one JSON line per POST to stdout:
// {"content_type": ..., "events": [the events in structured JSON]}; an unreadable request is
// answered 400 and printed with "error".
//
//	go run ./ce_http PORT
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sync"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: ce_http PORT")
		os.Exit(2)
	}
	var mu sync.Mutex
	out := json.NewEncoder(os.Stdout)
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusOK)
			return
		}
		rec := map[string]interface{}{"content_type": r.Header.Get("Content-Type")}
		events, err := cehttp.NewEventsFromHTTPRequest(r)
		for i := 0; err == nil && i < len(events); i++ {
			err = events[i].Validate()
		}
		if err != nil {
			rec["error"] = err.Error()
			w.WriteHeader(http.StatusBadRequest)
		} else {
			rec["events"] = events
			w.WriteHeader(http.StatusOK)
		}
		mu.Lock()
		out.Encode(rec)
		os.Stdout.Sync()
		mu.Unlock()
	})
	if err := http.ListenAndServe("127.0.0.1:"+os.Args[1], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
