#!/bin/sh
cat /app/hello.txt /data/greeting.txt
