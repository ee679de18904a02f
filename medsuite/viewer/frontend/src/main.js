// Entry point of the component page: wires Streamlit renders to the reading view, one at a time (a render that
// arrives while the previous one is still loading waits, and only the newest waiting one is applied).

import { connect, setFrameHeight, setValue } from "./streamlit.js";
import { ReadingView } from "./viewer.js";

const MIN_HEIGHT = 560;
const view = new ReadingView(document.getElementById("app"), { onState: setValue });

let busy = false;
let waiting = null;

async function run(args) {
  busy = true;
  try {
    const spec = JSON.parse(args.spec || "{}");
    await view.update(spec, { volume: args.volume, heat: args.heat, nodules: args.nodules, marks: args.marks });
    fitHeight(spec.height);
  } catch (err) {
    console.error(err);
    view.showMessage(`The viewer failed: ${err.message}`);
  } finally {
    busy = false;
  }
  if (waiting) {
    const next = waiting;
    waiting = null;
    await run(next);
  }
}

let lastHeight = 0;
let fixedHeight = null;

/** Fill the browser window below the frame's top edge (a reading layout), or use the height Python asked for. */
function fitHeight(requested) {
  fixedHeight = requested || null;
  let height = fixedHeight || MIN_HEIGHT;
  if (!fixedHeight) {
    try {
      const top = window.frameElement.getBoundingClientRect().top + window.parent.scrollY;
      height = Math.max(MIN_HEIGHT, Math.floor(window.parent.innerHeight - Math.max(top, 0) - 12));
    } catch {
      height = MIN_HEIGHT;
    }
  }
  if (height !== lastHeight) {
    lastHeight = height;
    document.documentElement.style.setProperty("--frame-height", `${height}px`);
    setFrameHeight(height);
  }
}

try {
  window.parent.addEventListener("resize", () => fitHeight(fixedHeight));
} catch {
  /* another origin */
}

connect((args) => {
  if (busy) waiting = args;
  else run(args);
});
