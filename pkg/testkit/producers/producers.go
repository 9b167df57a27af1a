// Package producers builds the JSON messages that NATS and MQTT producers
// publish straight to surge.in.<tenant>.<anything>, for tests that stand
// for such a producer.
package producers

import "encoding/json"

// Event is one event of a producer's message: the fields the tests set.
type Event struct {
	ID     string `json:"event_id"`
	UserID string `json:"user_id"`
	Type   string `json:"type"`
}

// Message is events as one producer message: a JSON array.
func Message(events []Event) []byte {
	b, err := json.Marshal(events)
	if err != nil {
		panic(err) // three strings a field: Marshal cannot fail
	}
	return b
}
