#!/bin/sh
echo "hello from an image built by rules_img"
