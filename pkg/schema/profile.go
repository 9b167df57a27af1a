package schema

import (
	"math/rand/v2"
	"strconv"
)

// Profiles are the names Profile knows: the property shapes of the design's
// typed-columns benchmark.
var Profiles = []string{"p20", "sparse200", "nested", "hostile"}

// Profile is the properties JSON of event i of a benchmark profile, its
// values drawn from rng (seed it for the same events every run):
//
//   - p20: the same 20 keys on every event, 5 each of int, float,
//     low-cardinality string and bool;
//   - sparse200: 20 keys drawn from 200, each key always of one kind;
//   - nested: context.page.*, context.library.*, a products array of 3
//     objects and two levels of objects (order.shipping.*);
//   - hostile: 10 keys shared by every event, one in ten of their values of
//     another type, and 10 keys from 10,000 (event i has keys 10i to 10i+9
//     modulo 10,000), so the schema sees a key explosion.
//
// An unknown name gives "{}".
func Profile(name string, rng *rand.Rand, i int) string {
	var b []byte
	switch name {
	case "p20":
		b = p20(rng)
	case "sparse200":
		b = sparse200(rng)
	case "nested":
		b = nested(rng)
	case "hostile":
		b = hostile(rng, i)
	default:
		return "{}"
	}
	return string(b)
}

var (
	profilePlans     = []string{"free", "team", "pro", "enterprise"}
	profileCountries = []string{"de", "fr", "us", "br", "jp", "in", "gb", "es"}
	profileBrowsers  = []string{"chrome", "firefox", "safari", "edge"}
	profileOSes      = []string{"android", "ios", "windows", "macos", "linux"}
	profileChannels  = []string{"organic", "paid", "email", "referral", "social"}
	profilePages     = []string{"home", "pricing", "docs", "blog", "signup", "checkout"}
)

func p20(rng *rand.Rand) []byte {
	var w jsonWriter
	w.begin()
	for _, k := range []string{"quantity", "duration_ms", "page_index", "retry_count", "items"} {
		w.int(k, rng.Int64N(10_000))
	}
	for _, k := range []string{"price", "discount", "latency", "score", "weight"} {
		w.float(k, rng.Float64()*1000)
	}
	for _, k := range []struct {
		name   string
		values []string
	}{{"plan", profilePlans}, {"country", profileCountries}, {"browser", profileBrowsers}, {"os", profileOSes}, {"channel", profileChannels}} {
		w.str(k.name, k.values[rng.IntN(len(k.values))])
	}
	for _, k := range []string{"logged_in", "is_trial", "has_coupon", "mobile", "first_visit"} {
		w.bool(k, rng.IntN(2) == 1)
	}
	w.end()
	return w.b
}

// sparse200's key j is always of kind j%4: int, float, string, bool.
func sparse200(rng *rand.Rand) []byte {
	var w jsonWriter
	w.begin()
	for _, j := range rng.Perm(200)[:20] {
		k := "attr_" + strconv.Itoa(j)
		switch j % 4 {
		case 0:
			w.int(k, rng.Int64N(1_000_000))
		case 1:
			w.float(k, rng.Float64()*100)
		case 2:
			w.str(k, profileChannels[rng.IntN(len(profileChannels))])
		default:
			w.bool(k, rng.IntN(2) == 1)
		}
	}
	w.end()
	return w.b
}

func nested(rng *rand.Rand) []byte {
	page := profilePages[rng.IntN(len(profilePages))]
	var w jsonWriter
	w.begin()
	w.open("context")
	w.open("page")
	w.str("url", "https://shop.example/"+page+"?ref="+strconv.Itoa(rng.IntN(100)))
	w.str("path", "/"+page)
	w.str("title", page)
	w.str("referrer", "https://search.example/?q="+strconv.Itoa(rng.IntN(1000)))
	w.end()
	w.open("library")
	w.str("name", "analytics.js")
	w.str("version", "4.1."+strconv.Itoa(rng.IntN(3)))
	w.end()
	w.end()
	w.key("products")
	w.b = append(w.b, '[')
	for n := range 3 {
		if n > 0 {
			w.b = append(w.b, ',')
		}
		w.begin()
		w.str("sku", "SKU-"+strconv.Itoa(rng.IntN(5000)))
		w.float("price", float64(rng.IntN(10_000))/100)
		w.int("quantity", 1+rng.Int64N(5))
		w.end()
	}
	w.b = append(w.b, ']')
	w.open("order")
	w.str("id", "o-"+strconv.FormatUint(rng.Uint64(), 36))
	w.float("total", float64(rng.IntN(100_000))/100)
	w.open("shipping")
	w.str("method", profileChannels[rng.IntN(len(profileChannels))])
	w.float("cost", float64(rng.IntN(2_000))/100)
	w.end()
	w.end()
	w.end()
	return w.b
}

func hostile(rng *rand.Rand, i int) []byte {
	var w jsonWriter
	w.begin()
	for n := range 10 {
		k := "n" + strconv.Itoa(n)
		if rng.IntN(10) == 0 {
			w.str(k, "n/a")
		} else {
			w.int(k, rng.Int64N(1_000))
		}
	}
	for n := range 10 {
		w.int("x"+strconv.Itoa(100_000 + (10*i+n)%10_000)[1:], rng.Int64N(1_000))
	}
	w.end()
	return w.b
}

// jsonWriter writes JSON objects member by member. Keys and strings here
// need no escaping.
type jsonWriter struct {
	b     []byte
	first bool // the next member is its object's first
}

// begin starts an object; end closes it.
func (w *jsonWriter) begin() {
	w.b = append(w.b, '{')
	w.first = true
}

func (w *jsonWriter) end() {
	w.b = append(w.b, '}')
	w.first = false
}

func (w *jsonWriter) key(k string) {
	if !w.first {
		w.b = append(w.b, ',')
	}
	w.first = false
	w.b = append(w.b, '"')
	w.b = append(w.b, k...)
	w.b = append(w.b, '"', ':')
}

// open starts an object member k.
func (w *jsonWriter) open(k string) {
	w.key(k)
	w.begin()
}

func (w *jsonWriter) int(k string, v int64) {
	w.key(k)
	w.b = strconv.AppendInt(w.b, v, 10)
}

func (w *jsonWriter) float(k string, v float64) {
	w.key(k)
	w.b = strconv.AppendFloat(w.b, v, 'f', 2, 64)
}

func (w *jsonWriter) str(k, v string) {
	w.key(k)
	w.b = strconv.AppendQuote(w.b, v)
}

func (w *jsonWriter) bool(k string, v bool) {
	w.key(k)
	w.b = strconv.AppendBool(w.b, v)
}
