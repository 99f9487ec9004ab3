module github.com/switchyard/switchyard/services/rules

go 1.26.8

replace (
	github.com/switchyard/switchyard/gen/go => ../../gen/go
	github.com/switchyard/switchyard/platform => ../../platform
)

require (
	github.com/switchyard/switchyard/gen/go v0.0.0-00010101000000-000000000000
	github.com/switchyard/switchyard/platform v0.0.0-00010101000000-000000000000
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260928230214-8a89bd6388cc
	google.golang.org/grpc v1.85.0
)

require (
	github.com/google/uuid v1.6.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
