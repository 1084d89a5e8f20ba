package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// mcpCall calls one tool of the MCP server at url (Streamable HTTP) with the JSON
// arguments and prints RESULT and the structured result, TOOLERROR and the tool's
// message, or ERROR.
func mcpCall(url, tool, arguments string) {
	var args map[string]any
	if err := json.Unmarshal([]byte(arguments), &args); err != nil {
		fail("arguments: " + err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	client := mcp.NewClient(&mcp.Implementation{Name: "bottle-e2e-probe", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: url, HTTPClient: &http.Client{Transport: &http.Transport{Proxy: nil}}}, nil)
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	defer cs.Close()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	if res.IsError {
		var texts []string
		for _, c := range res.Content {
			if t, ok := c.(*mcp.TextContent); ok {
				texts = append(texts, t.Text)
			}
		}
		fmt.Println("TOOLERROR", strings.Join(texts, " "))
		return
	}
	out, _ := json.Marshal(res.StructuredContent)
	fmt.Println("RESULT", string(out))
}

// postJSON posts body to url (no proxy) and prints STATUS and the answer.
func postJSON(url, body string) {
	resp, err := (&http.Client{Timeout: 90 * time.Second, Transport: &http.Transport{Proxy: nil}}).Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	fmt.Println("STATUS", resp.StatusCode, strings.TrimSpace(string(answer)))
}
