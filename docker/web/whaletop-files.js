// Files in and out of the desktop (whaletopd/filedav.py behind the front door):
//  - drop files anywhere on the page, or pick them in the Files panel: each is uploaded
//    to ~/Desktop (PUT files/Desktop/NAME) with a progress bar, and a clear message when
//    refused;
//  - the Files panel lists ~/Downloads (where Chromium inside saves) and downloads any
//    file with one click.
// With sign-in the page's session cookie is enough; in the default mode each request
// carries HTTP Basic with the desktop's user name and the VNC password typed into noVNC
// (or given in the address).  GET files/ says which (404: file transfer is off).
import { basicAuth } from "./whaletop-auth.js";

const REFUSED = {
    400: "refused: the name has '/', '..' or control characters, or is too long",
    401: "refused: not signed in, or the VNC password is wrong",
    403: "refused: watch-only access cannot transfer files",
    404: "refused: file transfer is off on this desktop",
    409: "refused: ~/Desktop is missing on the desktop",
    413: "refused: larger than the desktop's upload limit",
    429: "refused: too many requests; try again in a minute",
};

let about = null;

// Headers for a request to files/ (null: nothing to send yet).
function authHeaders() {
    if (about.auth !== "vnc-password") return {};
    return basicAuth(about.user);
}

function human(bytes) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return (i ? bytes.toFixed(1) : bytes) + " " + units[i];
}

function element(tag, props = {}, ...children) {
    const e = Object.assign(document.createElement(tag), props);
    for (const child of children) e.append(child);
    return e;
}

const style = element("style", { textContent: `
#whaletop_files_button { position: fixed; top: 32px; right: 4px; z-index: 1000;
  font: 12px sans-serif; opacity: .85; }
#whaletop_files_panel { position: fixed; top: 58px; right: 4px; z-index: 1000;
  width: 340px; max-height: 60vh; overflow: auto; background: #fff; color: #222;
  border: 1px solid #888; border-radius: 4px; padding: 8px; font: 13px sans-serif;
  box-shadow: 0 2px 8px rgba(0,0,0,.4); }
#whaletop_files_panel[hidden], #whaletop_uploads:empty { display: none; }
#whaletop_files_panel h3 { font-size: 13px; margin: 6px 0 4px; }
#whaletop_files_panel ul { list-style: none; margin: 0; padding: 0; }
#whaletop_files_panel li a { display: block; padding: 2px 0; word-break: break-all; }
#whaletop_uploads { position: fixed; top: 6px; left: 50%; transform: translateX(-50%);
  z-index: 1001; width: 360px; font: 12px sans-serif; }
.whaletop-upload { background: #fff; color: #222; border: 1px solid #888;
  border-radius: 4px; padding: 4px 6px; margin-bottom: 4px; }
.whaletop-upload progress { width: 100%; }
.whaletop-upload[data-state=refused] { border-color: #c00; color: #900; }
#whaletop_drop { position: fixed; inset: 0; z-index: 999; background: rgba(30,90,200,.25);
  border: 4px dashed #1e5ac8; pointer-events: none; }
` });

const uploads = element("div", { id: "whaletop_uploads" });

function upload(file) {
    const row = element("div", { className: "whaletop-upload" });
    row.dataset.name = file.name;
    row.dataset.state = "sending";
    const label = element("div", { textContent: file.name + " (" + human(file.size) + ")" });
    const bar = element("progress", { max: 1, value: 0 });
    const note = element("div", { className: "whaletop-note" });
    row.append(label, bar, note);
    uploads.append(row);
    const finish = (state, text, keep) => {
        row.dataset.state = state;
        note.textContent = text;
        bar.remove();
        setTimeout(() => row.remove(), keep);
    };
    const headers = authHeaders();
    if (headers === null) {
        finish("refused", "refused: connect to the desktop first (the VNC password is " +
            "needed)", 15000);
        return;
    }
    if (file.size > about.max_upload) {
        finish("refused", "refused: larger than the desktop's upload limit (" +
            human(about.max_upload) + ")", 15000);
        return;
    }
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", "files/Desktop/" + encodeURIComponent(file.name));
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
    xhr.onload = () => {
        if (xhr.status === 201 || xhr.status === 204) {
            finish("done", "on the desktop", 4000);
        } else {
            finish("refused", REFUSED[xhr.status] || ("refused: HTTP " + xhr.status), 15000);
        }
    };
    xhr.onerror = () => finish("refused", "failed: the connection was lost (the limit is " +
        human(about.max_upload) + ")", 15000);
    xhr.send(file);
}

async function listDownloads(list) {
    list.replaceChildren(element("li", { textContent: "…" }));
    const headers = authHeaders();
    if (headers === null) {
        list.replaceChildren(element("li", { textContent: "Connect to the desktop first." }));
        return;
    }
    const answer = await fetch("files/Downloads/", { cache: "no-store", headers,
                                                     credentials: "same-origin" });
    if (!answer.ok) {
        list.replaceChildren(element("li", { textContent: REFUSED[answer.status] ||
            ("HTTP " + answer.status) }));
        return;
    }
    const entries = (await answer.json()).filter((e) => e.type === "file");
    entries.sort((a, b) => Date.parse(b.mtime) - Date.parse(a.mtime));
    if (!entries.length) {
        list.replaceChildren(element("li", { textContent: "~/Downloads is empty." }));
        return;
    }
    list.replaceChildren(...entries.map((entry) => {
        const href = "files/Downloads/" + encodeURIComponent(entry.name);
        const link = element("a", { href, className: "whaletop-file",
                                    textContent: entry.name + " (" + human(entry.size) + ")" });
        link.dataset.name = entry.name;
        link.download = entry.name;
        if (about.auth === "vnc-password") {
            // A link cannot carry the password: fetch it, then save it.
            link.onclick = async (event) => {
                event.preventDefault();
                const got = await fetch(href, { headers: authHeaders() || {} });
                if (!got.ok) { link.textContent = entry.name + ": HTTP " + got.status; return; }
                const url = URL.createObjectURL(await got.blob());
                const save = element("a", { href: url, download: entry.name });
                document.body.append(save);
                save.click();
                save.remove();
                setTimeout(() => URL.revokeObjectURL(url), 60000);
            };
        }
        return element("li", {}, link);
    }));
}

function panel() {
    const list = element("ul", { id: "whaletop_downloads" });
    const picker = element("input", { type: "file", multiple: true,
                                       id: "whaletop_files_picker" });
    picker.onchange = () => { for (const f of picker.files) upload(f); picker.value = ""; };
    const refresh = element("button", { type: "button", textContent: "Refresh" });
    refresh.onclick = () => listDownloads(list);
    const box = element("div", { id: "whaletop_files_panel", hidden: true },
        element("h3", { textContent: "Upload to ~/Desktop (or drop files on the page)" }),
        picker,
        element("h3", {}, "~/Downloads ", refresh),
        list);
    const button = element("button", { type: "button", id: "whaletop_files_button",
                                       textContent: "Files" });
    button.onclick = () => {
        box.hidden = !box.hidden;
        if (!box.hidden) listDownloads(list);
    };
    document.body.append(box, button);
}

function dropZone() {
    const shade = element("div", { id: "whaletop_drop", hidden: true });
    document.body.append(shade);
    const carriesFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
    let depth = 0;
    document.addEventListener("dragenter", (e) => {
        if (!carriesFiles(e)) return;
        depth++;
        shade.hidden = false;
    }, true);
    document.addEventListener("dragleave", (e) => {
        if (!carriesFiles(e)) return;
        if (--depth <= 0) { depth = 0; shade.hidden = true; }
    }, true);
    document.addEventListener("dragover", (e) => {
        if (!carriesFiles(e)) return;
        e.preventDefault();
        e.dataTransfer.dropEffect = "copy";
    }, true);
    document.addEventListener("drop", (e) => {
        if (!carriesFiles(e)) return;
        e.preventDefault();
        e.stopPropagation();
        depth = 0;
        shade.hidden = true;
        for (const file of e.dataTransfer.files) upload(file);
    }, true);
}

// What the page decided, for people reading the DOM and for the tests:
// <html data-whaletop-files="on|off|viewer">.
function decided(word) {
    document.documentElement.dataset.whaletopFiles = word;
}

async function start() {
    let answer;
    try {
        answer = await fetch("files/", { cache: "no-store", credentials: "same-origin" });
    } catch (error) {
        decided("off");
        return;
    }
    if (!answer.ok) { decided("off"); return; }  // file transfer is off
    about = await answer.json();
    if (about.auth === "sign-in") {
        // A viewer (watch-only) may not transfer files: no button, no drop zone.
        const session = await fetch("auth/session", { cache: "no-store",
                                                      credentials: "same-origin" });
        if (session.ok && (await session.json()).role !== "full") { decided("viewer"); return; }
    }
    document.head.append(style);
    document.body.append(uploads);
    panel();
    dropZone();
    decided("on");
}

start();
