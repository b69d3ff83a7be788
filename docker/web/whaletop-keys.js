// whaletop's clipboard and keyboard for noVNC's page (imported by whaletop.js).
//
// Clipboard, where the browser has the asynchronous Clipboard API with its permissions
// (Chromium-based browsers, on https:// or localhost): text copied on the desktop goes
// to the person's clipboard (retried on the next focus when the page had none), and
// text copied on their machine goes to the desktop when the desktop gets focus or the
// pointer enters it.  The first click asks the browser's permission once; refused,
// or in other browsers, noVNC's clipboard panel does the work as before.  What came
// from the desktop is never sent back to it (no loop).  TigerVNC's extended clipboard
// carries UTF-8, so é, 漢字 and emoji arrive intact.
//
// Keyboard: noVNC sends physical key codes, which the desktop maps through its own
// layout (--keyboard-layout).  Where the browser can tell the person's layout
// (navigator.keyboard.getLayoutMap) and it differs from the desktop's, a note says so.
// With full access, its button "Use LAYOUT on the desktop" switches the desktop's
// layout (PUT whaletop/keyboard/layout; whaletopd applies it and says so at
// whaletop/keyboard): signed in, with the page's session; by default, with HTTP Basic,
// the desktop's user name and the VNC password typed into noVNC (as whaletop-files.js
// does).  Otherwise (a viewer, a view-only password) it names the flag.
import UI from "./app/ui.js";
import { basicAuth } from "./whaletop-auth.js";

const clip = {
    fromDesktop: null,  // the last text the desktop sent: never echoed back
    sent: null,         // the last text sent to the desktop
    unwritten: null,    // desktop text the page could not write yet (no focus)
};
let readState = "unsupported";  // the clipboard-read permission: granted, prompt, denied
const wired = new WeakSet();

async function watchPermission() {
    if (!navigator.clipboard || !navigator.clipboard.readText ||
        !navigator.permissions) return;
    try {
        // Browsers without the permission (Firefox, Safari) throw: the panel stays.
        const status = await navigator.permissions.query({ name: "clipboard-read" });
        readState = status.state;
        status.addEventListener("change", () => { readState = status.state; });
    } catch (error) {
        readState = "unsupported";
    }
}

async function writeLocal() {
    const text = clip.unwritten;
    if (text === null || readState === "unsupported") return;
    try {
        await navigator.clipboard.writeText(text);
        if (clip.unwritten === text) clip.unwritten = null;
    } catch (error) {
        // No focus or no permission: the next focus tries again.
    }
}

async function readLocal() {
    if (readState !== "granted" || !UI.rfb || !UI.connected) return;
    if (clip.unwritten !== null) return;  // the desktop's text is newer
    let text;
    try {
        text = await navigator.clipboard.readText();
    } catch (error) {
        return;  // no focus: the next focus reads
    }
    if (!text || text === clip.fromDesktop || text === clip.sent) return;
    clip.sent = text;
    UI.rfb.clipboardPasteFrom(text);
}

async function askOnce() {
    // A click is the gesture a permission prompt needs; asked at most once per page.
    if (readState !== "prompt") return;
    try {
        await navigator.clipboard.readText();
        readState = "granted";
        readLocal();
    } catch (error) {
        readState = "denied";
    }
}

function wire(rfb) {
    if (wired.has(rfb)) return;
    wired.add(rfb);
    rfb.addEventListener("clipboard", (e) => {
        clip.fromDesktop = e.detail.text;
        clip.unwritten = e.detail.text;
        writeLocal();
    });
    const screen = document.getElementById("noVNC_container");
    screen.addEventListener("pointerenter", readLocal);
    screen.addEventListener("pointerdown", askOnce, { once: true });
}

async function getJSON(path) {
    const answer = await fetch(path, { cache: "no-store", credentials: "same-origin" });
    return answer.ok ? answer.json() : null;
}

async function keyboardNote() {
    if (!navigator.keyboard || !navigator.keyboard.getLayoutMap) return;
    let map, info;
    try {
        map = await navigator.keyboard.getLayoutMap();
        info = await getJSON("whaletop/keyboard");
    } catch (error) {
        return;
    }
    if (info === null) return;
    const desktop = info.layout;
    const guess = guessLayout(map), base = desktop.split("(")[0];
    // Only the families told apart here (gb looks like us to this test).
    if (guess === null || base === guess || !["us", "de", "fr"].includes(base)) return;
    const note = document.createElement("div");
    note.id = "whaletop_keyboard_note";
    note.style.cssText = "position:fixed;bottom:4px;left:50%;transform:translateX(-50%);" +
        "z-index:1000;max-width:90%;padding:4px 8px;background:#fff8d0;color:#333;" +
        "border:1px solid #c9b458;font:12px sans-serif;opacity:.95";
    const text = document.createElement("span");
    text.textContent = `Your keyboard looks like "${guess}" but the desktop's layout is ` +
        `"${desktop}": keys may type other characters. `;
    note.appendChild(text);
    if (info.switch && (info.choices || []).includes(guess) && await fullAccess(info)) {
        // Full access: the desktop's layout can be switched from here.
        const use = document.createElement("button");
        use.id = "whaletop_keyboard_use";
        use.textContent = `Use ${guess} on the desktop`;
        use.addEventListener("click", () => switchLayout(guess, note, text, use, info));
        note.appendChild(use);
        note.appendChild(document.createTextNode(" "));
    } else {
        text.textContent += `Start the desktop with --keyboard-layout ${guess} ` +
            `(or WHALETOP_KEYBOARD_LAYOUT=${guess}). `;
    }
    const close = document.createElement("button");
    close.textContent = "OK";
    close.addEventListener("click", () => note.remove());
    note.appendChild(close);
    document.body.appendChild(note);
}

// The request's credentials: the session cookie with sign-in, else HTTP Basic.
function authHeaders(info) {
    if (info.auth !== "vnc-password") return {};
    return basicAuth(info.user) || {};
}

async function fullAccess(info) {
    // Switching needs full access (a viewer's request is refused anyway).  By default
    // the page cannot tell which password was typed: nginx refuses the view-only one.
    if (info.auth === "vnc-password") return true;
    try {
        const session = await getJSON("auth/session");
        return session !== null && session.role === "full";
    } catch (error) {
        return false;
    }
}

async function switchLayout(layout, note, text, use, info) {
    use.disabled = true;
    note.dataset.state = "asked";
    text.textContent = `Switching the desktop to "${layout}"… `;
    let answer;
    try {
        answer = await fetch("whaletop/keyboard/layout", {
            method: "PUT", body: layout, credentials: "same-origin",
            headers: { "Content-Type": "text/plain", ...authHeaders(info) } });
    } catch (error) {
        answer = null;
    }
    if (answer === null || !answer.ok) {
        note.dataset.state = "refused";
        const status = answer ? answer.status : 0;
        text.textContent = status === 403 || status === 401
            ? "Only full access may switch the desktop's layout. "
            : `The desktop did not take the layout (${status || "no answer"}). `;
        use.disabled = false;
        return;
    }
    // whaletopd applies it within moments, then says so at whaletop/keyboard.
    for (let i = 0; i < 40; i++) {
        await new Promise((done) => setTimeout(done, 250));
        let info = null;
        try {
            info = await getJSON("whaletop/keyboard");
        } catch (error) {
            continue;
        }
        if (info !== null && info.layout === layout) {
            note.dataset.state = "done";
            text.textContent = `The desktop now uses "${layout}". `;
            use.remove();
            return;
        }
    }
    note.dataset.state = "refused";
    text.textContent = `The desktop did not switch to "${layout}" (see its log). `;
    use.disabled = false;
}

// The layout family a browser's key map shows: what the letter keys type.
export function guessLayout(map) {
    const q = map.get("KeyQ"), z = map.get("KeyZ"), y = map.get("KeyY");
    const semicolon = map.get("Semicolon");
    if (q === undefined || z === undefined) return null;
    if (q === "a" && z === "w") return "fr";       // AZERTY (be is close)
    if (z === "y" && y === "z") {
        if (semicolon === "ö") return "de";        // QWERTZ, German (at, ch differ)
        return null;
    }
    if (q === "q" && z === "z" && semicolon === ";" && map.get("Backslash") === "\\") {
        return "us";
    }
    return null;
}

watchPermission();
window.addEventListener("focus", () => { writeLocal(); readLocal(); });
new MutationObserver(() => {
    if (UI.rfb && UI.connected) wire(UI.rfb);
}).observe(document.documentElement, { attributes: true, attributeFilter: ["class"] });
keyboardNote();
