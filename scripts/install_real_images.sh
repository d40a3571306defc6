#!/bin/sh
# Install the files of the `real-images` scenario (data source `emoji`, ease_engine/data/emoji.py):
#   fonts-noto-color-emoji  the Noto Color Emoji font (the images; SIL Open Font License 1.1)
#   unicode-data            emoji-test.txt: names, groups and subgroups of every emoji
#   unicode-cldr-core       CLDR English annotations: the keywords of each emoji
# Debian/Ubuntu packages; idempotent (does nothing when all three files are there).
set -e
FONT=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
EMOJI_TEST=/usr/share/unicode/emoji/emoji-test.txt
ANNOTATIONS=/usr/share/unicode/cldr/common/annotations/en.xml
if [ -f "$FONT" ] && [ -f "$EMOJI_TEST" ] && [ -f "$ANNOTATIONS" ]; then
    echo "real-images data is installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "real-images data needs the Debian packages fonts-noto-color-emoji unicode-data unicode-cldr-core;" \
        "this system has no apt-get: install their equivalents so that $FONT, $EMOJI_TEST and $ANNOTATIONS exist" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "real-images data: run as root: apt-get install fonts-noto-color-emoji unicode-data unicode-cldr-core" >&2
        exit 1
    fi
    SUDO="sudo"
fi
PACKAGES="fonts-noto-color-emoji unicode-data unicode-cldr-core"
# the package lists may be missing or stale on a fresh machine: update once if the first try fails
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PACKAGES \
    || { $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PACKAGES; }
