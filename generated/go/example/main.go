// Command example uses the generated Go package against a running chatd over native gRPC:
// it creates a session, streams a reply, answers a caller-executed tool and reads a rich
// error's ErrorInfo and BadRequest.
//
// Against `make run` (echo provider):
//
//	go run ./example                          # 127.0.0.1:50051
//	go run ./example -api-key KEY -tls HOST:PORT
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	chatdv1 "github.com/chatd/chatd/generated/go/chatd/v1"
)

// The caller-executed tool's declaration: its JSON schema given as JSON text.
var lookupOrder = &chatdv1.FunctionDeclaration{
	Name:           "lookup_order",
	Description:    "The shipping status of a customer's order.",
	ParametersJson: `{"type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]}`,
}

// runLookupOrder is the tool itself; a real service would query its order database.
func runLookupOrder(argsJSON string) (string, error) {
	var args struct {
		OrderID json.Number `json:"order_id"`
	}
	if err := json.Unmarshal([]byte(argsJSON), &args); err != nil {
		return "", err
	}
	out, err := json.Marshal(map[string]any{"order_id": args.OrderID, "status": "shipped"})
	return string(out), err
}

// stream runs one turn, printing text as it arrives, and returns the final reply.
func stream(ctx context.Context, client chatdv1.ChatServiceClient, sessionID, text string) (*chatdv1.Reply, error) {
	events, err := client.StreamReply(ctx, &chatdv1.StreamReplyRequest{SessionId: sessionID, Text: text})
	if err != nil {
		return nil, err
	}
	fmt.Print("model: ")
	for {
		event, err := events.Recv()
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the stream ended without a reply")
		}
		if err != nil {
			return nil, err
		}
		switch e := event.Event.(type) {
		case *chatdv1.StreamReplyResponse_TextDelta:
			fmt.Print(e.TextDelta.Text)
		case *chatdv1.StreamReplyResponse_Reply:
			fmt.Println()
			return e.Reply, nil
		}
	}
}

// answerTools runs every pending caller tool call and answers them, until none are pending.
func answerTools(ctx context.Context, client chatdv1.ChatServiceClient, sessionID string, reply *chatdv1.Reply) (*chatdv1.Reply, error) {
	for len(reply.PendingToolCalls) > 0 {
		var results []*chatdv1.ToolResult
		for _, call := range reply.PendingToolCalls {
			output, err := runLookupOrder(call.ArgsJson)
			if err != nil {
				return nil, err
			}
			fmt.Printf("tool call: %s(%s) -> %s\n", call.Name, call.ArgsJson, output)
			results = append(results, &chatdv1.ToolResult{
				CallId:  call.Id,
				Outcome: &chatdv1.ToolResult_ResultJson{ResultJson: output},
			})
		}
		sent, err := client.SendMessage(ctx, &chatdv1.SendMessageRequest{SessionId: sessionID, ToolResults: results})
		if err != nil {
			return nil, err
		}
		reply = sent.Reply
	}
	return reply, nil
}

// printDetails prints a rich error's code, ErrorInfo reason and BadRequest field violations,
// read from the grpc-status-details-bin trailer.
func printDetails(err error) {
	st, _ := status.FromError(err)
	fmt.Printf("error: %s\n", st.Code())
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			fmt.Printf("reason: %s\n", d.Reason)
		case *errdetails.BadRequest:
			for _, v := range d.FieldViolations {
				fmt.Printf("field: %s: %s\n", v.Field, v.Description)
			}
		}
	}
}

func run(address, apiKey string, useTLS bool) error {
	creds := grpc.WithInsecure()
	if useTLS {
		creds = grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{}))
	}
	conn, err := grpc.Dial(address, creds)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := chatdv1.NewChatServiceClient(conn)
	ctx := context.Background()
	if apiKey != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+apiKey)
	}

	created, err := client.CreateSession(ctx, &chatdv1.CreateSessionRequest{Session: &chatdv1.Session{
		DisplayName:          "example",
		FunctionDeclarations: []*chatdv1.FunctionDeclaration{lookupOrder},
	}})
	if err != nil {
		return err
	}
	sessionID := created.Session.SessionId
	fmt.Printf("session: %s\n", sessionID)

	reply, err := stream(ctx, client, sessionID, "Hello from Go")
	if err != nil {
		return err
	}
	fmt.Printf("finish_reason: %s\n", reply.FinishReason)

	// The echo provider calls the tool named after /call; a model decides by itself.
	reply, err = stream(ctx, client, sessionID, "Where is order 42?\n/call lookup_order {\"order_id\": 42}")
	if err != nil {
		return err
	}
	fmt.Printf("paused: %s\n", reply.FinishReason)
	reply, err = answerTools(ctx, client, sessionID, reply)
	if err != nil {
		return err
	}
	fmt.Printf("after tools: %s\n", reply.FinishReason)

	_, err = client.CreateSession(ctx, &chatdv1.CreateSessionRequest{SessionId: "not a valid id!"})
	if err == nil {
		return errors.New("the malformed id was accepted")
	}
	printDetails(err)
	return nil
}

func main() {
	apiKey := flag.String("api-key", os.Getenv("CHATD_API_KEY"), "the API key, sent as a bearer token")
	useTLS := flag.Bool("tls", false, "connect with TLS")
	flag.Parse()
	address := "127.0.0.1:50051"
	if flag.NArg() > 0 {
		address = flag.Arg(0)
	}
	if err := run(address, *apiKey, *useTLS); err != nil {
		log.Fatal(err)
	}
}
