package ingest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/klauspost/compress/gzip"
)

// HeaderIdempotencyKey names the request header whose value becomes the
// JetStream message id, so a client retry within the duplicate window is
// stored once.
const HeaderIdempotencyKey = "Idempotency-Key"

// maxIdempotencyKeyLen bounds the key, which travels in every message id.
const maxIdempotencyKeyLen = 200

// admit takes the steps of every POST once its tenant is known: an
// in-flight slot (429 when none is free), the Idempotency-Key, the
// Content-Encoding and the body, read within p's size limits (readBody).
// It returns the body and the key with the slot's release, to call once
// the request is answered; or the reply of the first step that failed,
// the slot already given back.
func (s *Service) admit(w http.ResponseWriter, r *http.Request, p protocol) (body []byte, idemKey string, release func(), rep reply) {
	release, ok := s.acquire()
	if !ok {
		return nil, "", nil, reject(http.StatusTooManyRequests, reasonOverloaded, "too many requests in flight; retry later")
	}
	if idemKey, rep = idempotencyKey(r); rep.status == 0 {
		if gzipped, ok := bodyEncoding(r.Header.Get("Content-Encoding")); ok {
			body, rep = s.readBody(w, r, gzipped, p)
		} else {
			rep = reject(http.StatusUnsupportedMediaType, reasonMediaType, "Content-Encoding must be gzip or identity")
		}
	}
	if rep.status != 0 {
		release()
		return nil, "", nil, rep
	}
	return body, idemKey, release, reply{}
}

// acquire takes an in-flight slot, or says at once that none is free.
func (s *Service) acquire() (release func(), ok bool) {
	select {
	case s.slots <- struct{}{}:
		s.metrics.inFlight.Inc()
		return func() {
			<-s.slots
			s.metrics.inFlight.Dec()
		}, true
	default:
		return nil, false
	}
}

// idempotencyKey returns the request's Idempotency-Key ("" when absent),
// or the 400 of an invalid one.
func idempotencyKey(r *http.Request) (string, reply) {
	key := r.Header.Get(HeaderIdempotencyKey)
	if _, present := r.Header[HeaderIdempotencyKey]; present && !validIdempotencyKey(key) {
		return "", reject(http.StatusBadRequest, reasonBadRequest,
			fmt.Sprintf("%s must be 1 to %d printable ASCII characters", HeaderIdempotencyKey, maxIdempotencyKeyLen))
	}
	return key, reply{}
}

// authenticate returns the request's tenant: the default one when no API
// keys are configured, else the one of its bearer key.
func (s *Service) authenticate(r *http.Request) (string, bool) {
	if len(s.tenants) == 0 {
		return s.cfg.Ingest.DefaultTenant, true
	}
	scheme, key, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return s.tenantOf(key)
}

// tenantOf returns the tenant of an API key.
func (s *Service) tenantOf(key string) (string, bool) {
	tenant, ok := s.tenants[sha256.Sum256([]byte(strings.TrimSpace(key)))]
	return tenant, ok
}

func validIdempotencyKey(k string) bool {
	if k == "" || len(k) > maxIdempotencyKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

func bodyEncoding(contentEncoding string) (gzipped, ok bool) {
	switch strings.ToLower(strings.TrimSpace(contentEncoding)) {
	case "", "identity":
		return false, true
	case "gzip", "x-gzip":
		return true, true
	}
	return false, false
}

// streamer is a protocol that takes a body past MaxBodyBytes by decoding
// it as it reads (Segment's batches: a few huge messages must not cost the
// others of their batch).
type streamer interface {
	// streamLimit is the largest body, after decompression, of the
	// protocol's requests; MaxBodyBytes or less reads every body whole.
	streamLimit() int64
}

// readBody reads the whole body, decompressing it, and rejects it once
// it passes MaxBodyBytes: both the bytes on the wire and the bytes after
// decompression are limited, so a small gzip bomb gets 413 after reading
// no more than the limit. A body of a streamer past MaxBodyBytes but
// within its streamLimit is returned in part, its first MaxBodyBytes+1
// bytes, and the rest, decompressed and limited, is left in r.Body:
// the streamer's decode reads it all through wholeBody.
func (s *Service) readBody(w http.ResponseWriter, r *http.Request, gzipped bool, p protocol) ([]byte, reply) {
	limit := s.cfg.Ingest.MaxBodyBytes
	ceiling := limit
	if st, ok := p.(streamer); ok {
		ceiling = max(limit, st.streamLimit())
	}
	var body io.Reader = http.MaxBytesReader(w, r.Body, ceiling)
	var buf bytes.Buffer
	streamed := false
	if gzipped {
		zr, err := s.gzipReader(body)
		if err != nil {
			return nil, readReject(err, true, ceiling)
		}
		defer func() {
			if !streamed { // else the rest still reads from it
				s.gzipReaders.Put(zr)
			}
		}()
		body = http.MaxBytesReader(w, io.NopCloser(zr), ceiling)
	} else if r.ContentLength > 0 {
		buf.Grow(int(min(r.ContentLength, limit)) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(io.LimitReader(body, limit+1)); err != nil {
		return nil, readReject(err, gzipped, ceiling)
	}
	// Past the limit only when ceiling is larger: else MaxBytesReader failed.
	if int64(buf.Len()) > limit {
		streamed = true
		r.Body = io.NopCloser(bodyRest{r: body, gzipped: gzipped, limit: ceiling})
	}
	return buf.Bytes(), reply{}
}

// wholeBody is what a streamer decodes: the body readBody returned, then
// the rest it left in r.Body when it returned only the first part. A
// failure to read the rest is a *bodyError.
func (s *Service) wholeBody(r *http.Request, body []byte) io.Reader {
	if int64(len(body)) <= s.cfg.Ingest.MaxBodyBytes {
		return bytes.NewReader(body)
	}
	return io.MultiReader(bytes.NewReader(body), r.Body)
}

// bodyRest is the rest of a streamed body, whose read errors are
// *bodyError.
type bodyRest struct {
	r       io.Reader
	gzipped bool
	limit   int64
}

func (b bodyRest) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = &bodyError{rep: readReject(err, b.gzipped, b.limit)}
	}
	return n, err
}

// bodyError is a failure to read a streamed body (not a fault of its
// content), with its answer: 413 past the limit, 408, or 400 for bad gzip.
type bodyError struct{ rep reply }

func (e *bodyError) Error() string { return e.rep.message }

func (s *Service) gzipReader(r io.Reader) (*gzip.Reader, error) {
	if zr, ok := s.gzipReaders.Get().(*gzip.Reader); ok {
		if err := zr.Reset(r); err != nil {
			s.gzipReaders.Put(zr)
			return nil, err
		}
		return zr, nil
	}
	return gzip.NewReader(r)
}

func readReject(err error, gzipped bool, limit int64) reply {
	var tooLarge *http.MaxBytesError
	var netErr net.Error
	switch {
	case errors.As(err, &tooLarge):
		return reject(http.StatusRequestEntityTooLarge, reasonBodyTooLarge,
			fmt.Sprintf("body exceeds %d bytes (after decompression)", limit))
	case errors.As(err, &netErr) && netErr.Timeout():
		return reject(http.StatusRequestTimeout, reasonBadRequest, "timed out reading the body")
	case gzipped:
		return reject(http.StatusBadRequest, reasonBadGzip, "body is not valid gzip: "+err.Error())
	default:
		return reject(http.StatusBadRequest, reasonBadRequest, "read body: "+err.Error())
	}
}
