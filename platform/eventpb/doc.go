// Package eventpb holds the library's protobuf options for event messages
// (generated from platform/proto/switchyard/event/v1/event.proto). An event
// message declares its aggregate type, which names the topic its events go
// to:
//
//	message OrderConfirmed {
//	  option (switchyard.event.v1.aggregate) = "order";
//	  ...
//	}
//
// The outbox writer then takes the aggregate type from the message, and a
// consumer that handles the message type reads that topic.
package eventpb
