#!/bin/sh
# Workspace status for stamped tags: STABLE_ keys change the push request when they change.
echo "STABLE_VERSION 0.1.0"
