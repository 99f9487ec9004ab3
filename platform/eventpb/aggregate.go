package eventpb

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Aggregate returns the aggregate type md declares with the
// (switchyard.event.v1.aggregate) option, or "" if it declares none.
func Aggregate(md protoreflect.MessageDescriptor) string {
	opts := md.Options()
	if opts == nil || !proto.HasExtension(opts, E_Aggregate) {
		return ""
	}
	return proto.GetExtension(opts, E_Aggregate).(string)
}
