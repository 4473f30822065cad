#!/bin/sh
# Workspace status command of the stamping test.
echo "STABLE_RELEASE v1.2.3"
echo "BUILD_NUMBER 42"
