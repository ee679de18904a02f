// The Streamlit custom-component protocol (API version 1), without the streamlit-component-lib package (which
// would pull Apache Arrow into the bundle): the parent page posts "streamlit:render" with the arguments; the
// component answers with "streamlit:componentReady", "streamlit:setComponentValue" and "streamlit:setFrameHeight".

function send(type, data) {
  window.parent.postMessage({ isStreamlitMessage: true, type, ...data }, "*");
}

/** Start listening; `onRender(args)` is called with every render (bytes arguments arrive as Uint8Array). */
export function connect(onRender) {
  window.addEventListener("message", (event) => {
    if (event.source !== window.parent) return;
    const msg = event.data;
    if (msg && msg.type === "streamlit:render") onRender(msg.args || {}, msg);
  });
  send("streamlit:componentReady", { apiVersion: 1 });
}

/** Hand a JSON value to Python (the script reruns and reads it as the component's return value). */
export function setValue(value) {
  send("streamlit:setComponentValue", { value, dataType: "json" });
}

/** Ask the parent page to size the iframe to `height` CSS pixels. */
export function setFrameHeight(height) {
  send("streamlit:setFrameHeight", { height });
}
