// Command hello is the program inside the quick start's example image.
package main

import "fmt"

func main() {
	fmt.Println("hello from an image pushed by img")
}
