// Package joinpb is the Join API's contract: the gRPC service a joining node calls on the join service
// (generated from join.proto), and the constants both ends must agree on (contract.go).
package joinpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative join.proto
