#!/bin/sh
set -e
make --no-print-directory
