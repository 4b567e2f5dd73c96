# devicelet's container image, for users with a container engine:
#
#   docker build -t devicelet:dev .
#   docker run --rm devicelet:dev --version
#
# Two stages: the first compiles the TypeScript with every dependency, the second carries only
# the production dependencies, dist/ and the launcher, and runs as a non-root user. The base is
# the official Node.js 24 image on Debian bookworm, slim variant. Without a container engine,
# hack/image/build.sh builds the same image with buildah (CI does, and smoke-tests it).

FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# No dependency of devicelet needs an install script (no native addons).
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY bin ./bin
COPY schemas ./schemas
COPY src ./src
COPY providers ./providers
RUN npm run build && npm prune --omit=dev --ignore-scripts

FROM node:24-bookworm-slim
ENV NODE_ENV=production
# glibc's malloc gives blocks of 64 KiB and more back to the system when freed, rather than keeping
# what a burst allocated (bin/devicelet.js sets these itself when they are missing, by starting again).
ENV MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=65536
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/bin ./bin
# Without src/ beside it, the launcher runs the compiled dist/.
RUN ln -s /app/bin/devicelet.js /usr/local/bin/devicelet
# The `node` user of the base image (uid 1000, HOME /home/node). devicelet writes no file of its own
# (its state lives in the API server), so it runs on a read-only root filesystem as the chart sets
# it; test/integration/image.test.ts runs the image built by hack/image/build.sh that way.
USER 1000:1000
# 8080 metrics, 8081 health (/healthz, /readyz); 10250 and up the kubelet API, one port per device
# node (kubelet.port, kubelet.portCount).
EXPOSE 8080 8081 10250
ENTRYPOINT ["devicelet"]
CMD ["run", "--config", "/etc/devicelet/config.yaml"]
