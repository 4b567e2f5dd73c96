# devicelet's container image, for users with a container engine:
#
#   docker build -t devicelet:dev .
#   docker run --rm devicelet:dev --version
#
# Two stages: the first compiles the TypeScript with every dependency, the second carries only
# the production dependencies, dist/ and the launcher, and runs as a non-root user. The base is
# the official Node.js 24 image on Debian bookworm, slim variant.

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
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/bin ./bin
# Without src/ beside it, the launcher runs the compiled dist/.
RUN ln -s /app/bin/devicelet.js /usr/local/bin/devicelet
# The `node` user of the base image (uid 1000); the chart also sets runAsNonRoot and a read-only
# root filesystem, which devicelet needs: it writes nothing outside its API server state.
USER 1000:1000
# 10250 and up: the kubelet API, one port per device node (kubelet.port, kubelet.portCount).
EXPOSE 10250
ENTRYPOINT ["devicelet"]
CMD ["run", "--config", "/etc/devicelet/config.yaml"]
