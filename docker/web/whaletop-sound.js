// The desktop's sound in this tab (whaletopd/sound.py serves it at ./sound).
//  - A speaker button (browsers start sound only after a click): on, it opens the
//    WebSocket; each message is one Opus packet (20 ms, 48 kHz stereo), decoded by
//    WebCodecs and played by WebAudio a little ahead of time (JITTER); a packet that
//    would play later than MAX_AHEAD is dropped, so latency never piles up.
//  - No button when the desktop runs with --no-sound (./sound answers 404), or when the
//    browser has no WebCodecs (it needs a secure context: https, or localhost).
//  - Without sign-in, nginx asks for the VNC password first: the page gets a ticket (a
//    cookie of this start) from ./sound/ticket with HTTP Basic, as for files; with
//    sign-in, the page's session does.
//  - window.whaletopSound: the AnalyserNode the sound goes through, and counters (tests).
import { basicAuth } from "./whaletop-auth.js";

const RATE = 48000;
const CHANNELS = 2;
const JITTER = 0.06;     // seconds of sound kept ahead of the output
const MAX_AHEAD = 0.25;  // beyond that ahead, packets are dropped
const RETRY_MS = 2000;   // a lost connection is opened again while the speaker is on,
const MAX_RETRY_MS = 30000;  // less and less often while it keeps failing
let retry = RETRY_MS;

const state = {
    context: null, analyser: null, decoder: null, socket: null, on: false,
    next: 0, packets: 0, played: 0, dropped: 0, bytes: 0,
};
window.whaletopSound = state;

function play(data) {
    const ctx = state.context;
    const buffer = ctx.createBuffer(data.numberOfChannels, data.numberOfFrames, data.sampleRate);
    for (let c = 0; c < data.numberOfChannels; c++) {
        data.copyTo(buffer.getChannelData(c), { planeIndex: c, format: "f32-planar" });
    }
    data.close();
    const now = ctx.currentTime;
    if (state.next < now) state.next = now + JITTER;  // behind (or the first): start afresh
    if (state.next - now > MAX_AHEAD) {
        state.dropped++;
        return;
    }
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(state.analyser);
    source.start(state.next);
    state.next += buffer.duration;
    state.played++;
}

function newDecoder() {
    const decoder = new AudioDecoder({
        output: play,
        error: (e) => console.warn("whaletop sound: decoder error", e),
    });
    decoder.configure({ codec: "opus", sampleRate: RATE, numberOfChannels: CHANNELS });
    return decoder;
}

// Without sign-in: the cookie /sound asks for, for the VNC password.  False: refused.
// whaletop/keyboard says how this desktop asks (the one JSON the page reads in both
// modes: "auth" and the user name).
async function ticket() {
    let info;
    try {
        const answer = await fetch("whaletop/keyboard", { cache: "no-store",
                                                          credentials: "same-origin" });
        info = answer.ok ? await answer.json() : {};
    } catch (error) {
        info = {};
    }
    if (info.auth !== "vnc-password") return true;  // signed in: the session does
    const auth = basicAuth(info.user);
    if (auth === null) return false;  // not connected yet: no password
    try {
        const answer = await fetch("sound/ticket", { cache: "no-store",
                                                     credentials: "same-origin",
                                                     headers: auth });
        return answer.ok;
    } catch (error) {
        return false;
    }
}

async function connect(button) {
    if (!(await ticket())) {
        state.on = false;
        show(button, "Sound needs the desktop's full VNC password (connect first)");
        return;
    }
    if (state.on && !state.socket) state.socket = open(button);
}

function open(button) {
    const url = new URL("sound", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    let timestamp = 0;
    socket.onmessage = (message) => {
        const data = new Uint8Array(message.data);
        state.packets++;
        state.bytes += data.length;
        if (state.decoder.state !== "configured") state.decoder = newDecoder();
        if (state.decoder.decodeQueueSize > 4) {  // the decoder itself is behind
            state.dropped++;
            return;
        }
        state.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp, data }));
        timestamp += 20000;
    };
    socket.onopen = () => { retry = RETRY_MS; };
    socket.onclose = () => {
        if (state.socket === socket) state.socket = null;
        if (state.on) setTimeout(() => { if (state.on && !state.socket) connect(button); },
            retry);
        retry = Math.min(retry * 2, MAX_RETRY_MS);
    };
    return socket;
}

async function toggle(button) {
    if (!state.context) {
        state.context = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
        state.analyser = state.context.createAnalyser();
        state.analyser.fftSize = 8192;  // 5.9 Hz a bin
        state.analyser.connect(state.context.destination);
        state.decoder = newDecoder();
    }
    state.on = !state.on;
    show(button);
    if (state.on) {
        await state.context.resume();
        await connect(button);
    } else {
        if (state.socket) state.socket.close();
        state.socket = null;
    }
}

function show(button, why = "") {
    button.textContent = state.on ? "\u{1F50A}" : "\u{1F507}";
    button.title = why || (state.on ? "Sound on (click to mute)"
                                     : "Sound off (click to hear the desktop)");
    button.setAttribute("aria-pressed", String(state.on));
}

async function speakerButton() {
    if (typeof AudioDecoder === "undefined") return;  // no WebCodecs (not a secure context)
    let answer;
    try {
        answer = await fetch("sound", { cache: "no-store", credentials: "same-origin" });
    } catch (error) {
        return;
    }
    if (answer.status === 404) return;  // --no-sound
    const button = document.createElement("button");
    button.id = "whaletop_sound";
    button.type = "button";
    button.style.cssText = "position:fixed;bottom:4px;right:4px;z-index:1000;" +
        "font:16px sans-serif;opacity:.85;padding:2px 6px";
    button.textContent = "\u{1F507}";
    button.title = "Sound off (click to hear the desktop)";
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", () => toggle(button));
    document.body.appendChild(button);
}

speakerButton();
