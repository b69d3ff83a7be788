# whaletop: an LXDE desktop on TigerVNC, served to the browser by noVNC, run by whaletopd.
# Build with scripts/build (bootstraps debian:trixie offline when no registry answers).
FROM debian:trixie

ARG DEBIAN_FRONTEND=noninteractive

# Every Python dependency of whaletopd comes from Debian, so the image builds without PyPI.
# Slimming, in the same layer as the install (a later layer cannot make it smaller):
# dpkg leaves translations and manuals out (docker/slim/dpkg.cfg, later installs too);
# an empty package, whaletop-slim, stands in for the GL drivers, Ghostscript and cpp
# (docker/slim/stubs.sh says why each is not needed); noVNC's files come from its
# package without the package itself, whose only use of nodejs is a dependency.
COPY docker/slim/dpkg.cfg /etc/dpkg/dpkg.cfg.d/whaletop-slim
COPY docker/slim/stubs.sh /tmp/whaletop-stubs.sh
RUN apt-get update \
 && sh /tmp/whaletop-stubs.sh \
 && apt-get install -y --no-install-recommends \
        tini sudo ca-certificates \
        python3 python3-transitions python3-watchdog python3-psutil \
        python3-cryptography python3-structlog \
        tigervnc-standalone-server tigervnc-tools nginx \
        dbus dbus-x11 lxde-core lxterminal lxde-icon-theme gnome-themes-extra \
        x11-utils x11-xserver-utils xdotool xclip fonts-dejavu-core libnss-wrapper \
        chromium \
        pipewire pipewire-pulse wireplumber pulseaudio-utils \
 && cd /tmp && apt-get download novnc \
 && dpkg-deb -x novnc_*.deb /tmp/novnc \
 && mv /tmp/novnc/usr/share/novnc /usr/share/novnc \
 && install -D -m 0644 /tmp/novnc/usr/share/doc/novnc/copyright /usr/share/doc/novnc/copyright \
 && apt-get clean \
 && rm -rf /tmp/novnc /tmp/novnc_*.deb /tmp/whaletop-stubs.sh \
        /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old \
        /var/log/apt /var/log/dpkg.log

ENV LANG=C.UTF-8 \
    APPIMAGE_EXTRACT_AND_RUN=1 \
    PYTHONDONTWRITEBYTECODE=1

# Desktop defaults: the LXDE wallpaper (its alternatives link comes with desktop-base,
# not installed), no polkit agent or screen locker (no logind in a container: they only
# show errors; VNC has its own password),
# no screensaver (none installed).
RUN sed -i 's|^wallpaper=.*|wallpaper=/usr/share/lxde/wallpapers/lxde_blue.jpg|' \
        /etc/xdg/pcmanfm/LXDE/pcmanfm.conf \
 && rm -f /etc/xdg/autostart/lxpolkit.desktop /etc/xdg/autostart/light-locker.desktop \
 && sed -i 's|^\[Session\]$|[Session]\npolkit/command=/bin/true|' /etc/xdg/lxsession/LXDE/desktop.conf \
 && sed -i '/xscreensaver/d' /etc/xdg/lxsession/LXDE/autostart

# Ctrl+Alt+T opens a terminal, as on most desktops (LXDE's openbox binds no such key);
# new homes get it (startlxde copies this file to ~/.config/openbox/lxde-rc.xml once).
RUN sed -i 's|^<keyboard>$|<keyboard>\n  <keybind key="C-A-t"><action name="Execute"><command>lxterminal</command></action></keybind>|' \
        /etc/xdg/openbox/LXDE/rc.xml \
 && grep -q 'key="C-A-t"' /etc/xdg/openbox/LXDE/rc.xml

# The web root (on to noVNC, keeping the address's parameters) and whaletop's additions
# to noVNC's page (sign out; the handed-over password out of the address bar).
COPY docker/web/ /usr/share/novnc/
RUN sed -i 's|</head>|<script type="module" src="whaletop.js"></script>\n</head>|' \
        /usr/share/novnc/vnc.html \
 && grep -q whaletop.js /usr/share/novnc/vnc.html \
 && rm -f /etc/nginx/sites-enabled/default
COPY chrome.json /opt/whaletop/chrome.json
# Chromium through whaletop's launcher: sandboxed when the container allows it
# (--security-opt seccomp=chrome.json), else --no-sandbox with a visible warning.
COPY docker/chromium-launcher /usr/local/bin/chromium
RUN sed -i 's|^Exec=/usr/bin/chromium|Exec=/usr/local/bin/chromium|' \
        /usr/share/applications/chromium.desktop \
 && update-alternatives --quiet --install /usr/bin/x-www-browser x-www-browser \
        /usr/local/bin/chromium 250 \
 && update-alternatives --quiet --install /usr/bin/gnome-www-browser gnome-www-browser \
        /usr/local/bin/chromium 250
# Sound (whaletopd/sound.py): PipeWire's null sink "whaletop", and WirePlumber without
# the hardware monitors a container has nothing for.
COPY docker/pipewire/pipewire.conf /etc/pipewire/pipewire.conf.d/whaletop.conf
COPY docker/pipewire/pipewire-pulse.conf /etc/pipewire/pipewire-pulse.conf.d/whaletop.conf
COPY docker/pipewire/wireplumber.conf /etc/wireplumber/wireplumber.conf.d/whaletop.conf
COPY docker/start.py /start.py
COPY docker/whaletopd /usr/local/bin/whaletopd
COPY whaletopd /usr/lib/python3/dist-packages/whaletopd
# The X display's cookie (whaletopd/xauth.py), readable by the desktop user and root
# only: `docker exec -u user -e DISPLAY=:1 ...` finds it, any other uid is refused.
ENV XAUTHORITY=/run/whaletop/x/Xauthority
RUN python3 -m compileall -q /usr/lib/python3/dist-packages/whaletopd \
 && mkdir -p /Apps
# Any uid may run the container (docker run --user, OpenShift, Kubernetes' restricted
# pods): the folders whaletopd writes and the default home are open to it, sticky like
# /tmp.  As root, whaletopd closes them again (0755, the home the desktop user's).
RUN install -d -m 1777 /opt/whaletop /run/whaletop /home/user
# LXDE's panel without its CPU monitor: it redraws a graph every 1.5 s, over half of an
# idle desktop's CPU (0.03 CPU-s/min), for a graph of the container's own CPU nobody asked for.
RUN sed -i '/^Plugin {$/{N;/\n *type = cpu$/{N;d}}' /etc/xdg/lxpanel/LXDE/panels/panel \
 && ! grep -q 'type = cpu' /etc/xdg/lxpanel/LXDE/panels/panel

EXPOSE 8080
# The daemon's own word: healthy only when a user can connect now, and the daemon alive
# (its heartbeat is fresh).  A shell, not Python, once a minute: each exec costs the
# container ~25 ms of CPU in Docker's own machinery (runc), so every 5 s would be 0.3
# CPU-s/min for nothing.  Want Docker's word sooner?  docker run --health-interval=5s
# (or, Docker >= 25, --health-start-interval=1s); see README, Health and idle cost.
COPY docker/healthcheck /usr/local/bin/whaletop-healthcheck
HEALTHCHECK --interval=60s --timeout=5s --start-period=60s --retries=1 \
    CMD ["/usr/local/bin/whaletop-healthcheck"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["/start.py"]
