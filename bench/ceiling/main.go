// Command ceiling is the bare net/http server that bench/run measures the broker against: it answers POST
// /api/v2/wg/key/exchange as the broker does on the wire (the JSON body decoded, the key's form checked, a fixed
// endpoint written back) and does nothing else: no store, no MQTT, no gateway choice. Its requests per second on
// the same machine and load are the ceiling the broker's are a share of.
package main

import (
	"encoding/base64"
	"encoding/json"
	"flag"
	"log"
	"net/http"
)

const answer = `{"Endpoint":{"Address":"gw04.ext","LinkAddress":"fe80::1","Port":51820,"PublicKey":"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="}}` + "\n"

func main() {
	addr := flag.String("listen", "127.0.0.1:15999", "address to listen on")
	flag.Parse()
	http.HandleFunc("POST /api/v2/wg/key/exchange", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Domain    string `json:"domain"`
			PublicKey string `json:"public_key"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
			http.Error(w, `{"error":{"message":"bad request"}}`, http.StatusBadRequest)
			return
		}
		if b, err := base64.StdEncoding.DecodeString(req.PublicKey); err != nil || len(b) != 32 || req.Domain == "" {
			http.Error(w, `{"error":{"message":"bad key"}}`, http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(answer))
	})
	log.Fatal(http.ListenAndServe(*addr, nil))
}
