// Graphviz in the browser: the DOT from the API becomes an SVG element, drawn by Graphviz
// compiled to WebAssembly (vendor/viz.js, loaded on first use so list pages stay light).
let vizReady = null;

function viz() {
  if (vizReady === null) {
    vizReady = import("./vendor/viz.js").then((module) => module.instance());
  }
  return vizReady;
}

// Replace the contents of `container` with the graph of `dot`. The SVG is built by the
// browser's XML parser from Graphviz's output (which escapes every label), never as HTML.
export async function drawGraph(container, dot) {
  const instance = await viz();
  const svg = instance.renderSVGElement(dot);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "flow graph");
  container.replaceChildren(svg);
}

// The link that opens a DOT text in Graphviz Online (the DOT travels in the URL fragment,
// which browsers do not send to the server).
export function graphvizOnlineUrl(dot) {
  return "https://dreampuf.github.io/GraphvizOnline/#" + encodeURIComponent(dot);
}
