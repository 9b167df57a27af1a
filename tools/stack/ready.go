package stack

import (
	"net/http"
	"time"
)

var probe = &http.Client{Timeout: time.Second}

func ready(addr string) bool {
	resp, err := probe.Get("http://" + addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
