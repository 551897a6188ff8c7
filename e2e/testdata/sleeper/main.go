// Command sleeper is the only program inside the test images: it waits for SIGTERM, or exits 1
// at once when its first argument is "exit" (for a container that keeps restarting), or exits 1
// after the duration that follows "exit-after" (a task that runs a while, then fails), or exits 0
// at once when it is "done" (for a job that completes).
package main

import (
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "exit" {
		os.Exit(1)
	}
	if len(os.Args) > 2 && os.Args[1] == "exit-after" {
		d, err := time.ParseDuration(os.Args[2])
		if err != nil {
			os.Exit(2)
		}
		time.Sleep(d)
		os.Exit(1)
	}
	if len(os.Args) > 1 && os.Args[1] == "done" {
		return
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
