package rpc

import (
	"context"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// A request whose bytes do not decode is the caller's error, not the
// server's: grpc-go would fail it with INTERNAL before any interceptor ran,
// so unrecorded. The server's codec (requestCodec) decodes as the proto
// codec does but, on failure, notes the message as undecodable and reports
// success; the first interceptor of each chain takes the note back (so none
// outlives its call): a unary call goes on to the audit and authentication
// with an empty request and is refused with INVALID_ARGUMENT in place of
// its handler (refuseUndecodable); a stream's RecvMsg returns
// INVALID_ARGUMENT.

// requestCodec is the proto codec whose Unmarshal failures are noted in
// undecodable instead of returned.
type requestCodec struct {
	encoding.CodecV2
	undecodable *sync.Map // message pointer → error
}

func newRequestCodec() requestCodec {
	return requestCodec{CodecV2: encoding.GetCodecV2(protoenc.Name), undecodable: &sync.Map{}}
}

func (c requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err
	}
	proto.Reset(m) // nothing half-decoded is read
	c.undecodable.Store(v, err)
	return nil
}

// take returns (and forgets) the error that decoding v met, or nil.
func (c requestCodec) take(v any) error {
	err, ok := c.undecodable.LoadAndDelete(v)
	if !ok {
		return nil
	}
	return status.Errorf(codes.InvalidArgument, "malformed request: cannot unmarshal %T: %v", v, err)
}

type undecodableKey struct{}

// unary is the first unary interceptor: it takes the decoding note of the
// request into the call's context, for refuseUndecodable.
func (c requestCodec) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := c.take(req); err != nil {
		ctx = context.WithValue(ctx, undecodableKey{}, err)
	}
	return h(ctx, req)
}

// refuseUndecodable is the last unary interceptor: an undecodable request
// fails there, after audit and authentication, instead of reaching its
// handler.
func refuseUndecodable(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err, ok := ctx.Value(undecodableKey{}).(error); ok {
		return nil, err
	}
	return h(ctx, req)
}

// stream is the first stream interceptor: the stream's RecvMsg fails with
// INVALID_ARGUMENT on a message that did not decode.
func (c requestCodec) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, &decodedStream{ServerStream: ss, codec: c})
}

type decodedStream struct {
	grpc.ServerStream
	codec requestCodec
}

func (s *decodedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.codec.take(m)
}
