// Package testpb holds event messages for the library's own tests
// (generated from platform/proto/switchyard/testing/v1/testing.proto). They
// declare their aggregates as a service's events do.
package testpb
